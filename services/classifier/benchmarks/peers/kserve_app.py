"""KServe's Python ModelServer: the same work as a kserve.Model (preprocess: the v1 protocol's
base64 instances -> model inputs; predict: the engine on them; top-5 back), served on the
ModelServer's HTTP port, REST only, one worker, as a KServe user writes a custom predictor."""
import base64
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Classifier, arguments  # noqa: E402


def main():
    p = arguments()
    args, _ = p.parse_known_args()
    sys.argv = sys.argv[:1]   # kserve parses the command line when imported
    import kserve

    class ImageModel(kserve.Model):
        def __init__(self):
            super().__init__("mbv3")
            self.clf = Classifier(args.bundle, args.backend, args.threads, args.precision)
            self.ready = True

        def preprocess(self, payload, headers=None):
            return np.stack([self.clf.preprocess(base64.b64decode(i["image_bytes"]["b64"]))
                             for i in payload["instances"]])

        def predict(self, batch, headers=None):
            return {"predictions": [self.clf.answer(row) for row in self.clf.logits(batch)]}

    kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False).start([ImageModel()])


if __name__ == "__main__":
    main()
