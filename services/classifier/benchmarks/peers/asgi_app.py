"""A bare ASGI app (no framework) on uvicorn: POST /classify with the image as the body, the work
done inline on the event loop, JSON back. The least a Python server can do per request."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Classifier, arguments  # noqa: E402


def make_app(clf):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["path"] == "/healthz":
            status, payload = 200, {"status": "ok"}
        else:
            try:
                status, payload = 200, {"predictions": clf.classify(body)}
            except Exception as e:   # a bad image: the peer answers 400 like the service
                status, payload = 400, {"error": str(e)}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})
    return app


def main():
    p = arguments()
    args = p.parse_args()
    import uvicorn
    uvicorn.run(make_app(Classifier(args.bundle, args.backend, args.threads, args.precision)), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
