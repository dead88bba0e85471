"""The FastAPI app, assembled: settings -> the Service (bundle, engine, pipeline) -> one app with the
middleware, every error in errors.py's shapes, a lifespan that loads the model after the port opens,
one router per protocol (routes_classify.py, routes_kserve.py) and the pages (routes_page.py).
Nothing here handles a request."""
from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from . import __version__, kserve, routes_classify, routes_kserve, routes_page
from . import errors as errors_mod
from .errors import ApiError, error_response
from .middleware import RequestContext
from .service import Service


def create_app(settings, backend_factory=None):
    """The app for `settings`; backend_factory (backends.create's signature) lets tests inject a backend."""
    service = Service(settings, backend_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.ensure_future(service.start())  # the port opens at once; /readyz flips after warm-up
        yield
        if not task.done():
            task.cancel()
        await service.stop()

    # redirect_slashes=False: Starlette would answer `/classify/` with a 307 whose Location it builds
    # from the client's Host header; here it is a JSON 404 like any unknown path.
    app = FastAPI(title="classifier", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  redirect_slashes=False,
                  description="MobileNetV3 image classifier (%s v%s)" % (service.bundle.name, service.bundle.version))
    app.state.service = service
    app.add_middleware(RequestContext, metrics=service.metrics)   # added last, so outermost: it sees every answer
    add_error_handlers(app)
    app.include_router(routes_classify.router(service))
    app.include_router(routes_kserve.router(service))
    # `/`, `/docs` and `/redoc`, every file from this package or fastapi-offline's (no CDN)
    app.include_router(routes_page.router(app.title, app.openapi_url, app.swagger_ui_oauth2_redirect_url))
    return app


def add_error_handlers(app):
    """Every error in errors.py's shapes, whatever raised it."""
    def answer(request, status, code, message, headers=None):
        return error_response(request.url.path, status, code, message, getattr(request.state, "request_id", None),
                              headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return answer(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(HTTPException)   # Starlette's 404 and 405
    async def http_error(request: Request, exc: HTTPException):
        code = errors_mod.HTTP_CODES.get(exc.status_code, "invalid_request")
        allow = (exc.headers or {}).get("Allow")
        message = {404: "no route for %s" % request.url.path,
                   405: "%s is not allowed on %s (Allow: %s)" % (request.method, request.url.path, allow)
                   }.get(exc.status_code, str(exc.detail))
        return answer(request, exc.status_code, code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        where = ["%s: %s" % (".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()[:3]]
        return answer(request, 422, "invalid_request", "; ".join(where))

    @app.exception_handler(kserve.ProtocolError)
    async def protocol_error(request: Request, exc: kserve.ProtocolError):
        return answer(request, 400, exc.code, str(exc))
