"""LitServe: the same work as a LitAPI (decode_request: base64 JSON -> model input; predict: the
engine on a batch; encode_response: top-5), with LitServe's own batching (max_batch_size 8, 5 ms
timeout: the service's MAX_BATCH and MAX_DELAY_MS) when --batch is given."""
import base64
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Classifier, arguments  # noqa: E402

import litserve as ls  # noqa: E402


class ImageAPI(ls.LitAPI):
    def __init__(self, bundle, backend, threads, precision, **kw):
        super().__init__(**kw)
        self.args = (bundle, backend, threads, precision)

    def setup(self, device):
        self.clf = Classifier(*self.args)

    def decode_request(self, request):
        return self.clf.preprocess(base64.b64decode(request["image"]))

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.clf.logits(x if x.ndim == 4 else x[np.newaxis])

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        row = output if output.ndim == 1 else output[0]
        return {"predictions": self.clf.answer(row)}


def main():
    p = arguments()
    p.add_argument("--batch", action="store_true", help="LitServe's batching: max_batch_size 8, batch_timeout 5 ms")
    args = p.parse_args()
    batching = dict(max_batch_size=8, batch_timeout=0.005) if args.batch else {}
    api = ImageAPI(args.bundle, args.backend, args.threads, args.precision, **batching)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main()
