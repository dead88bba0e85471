"""Train on tests/fixed_data in a fresh process (logical CPU devices and multi-worker strategies
must be configured before TensorFlow initialises); prints one JSON line per logged step.
Usage: train_fixed.py MODEL_DIR [section.key=value ...]"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fixed_data  # noqa: E402
from mbv3 import config, train  # noqa: E402


def main():
    model_dir, overrides = sys.argv[1], sys.argv[2:]
    cfg = config.load("smoke", ["log.every_steps=1", "model.dropout_keep=1.0", "train.ema_decay=0"] + overrides)
    train.data = fixed_data.make(per_replica_batch=int(os.environ.get("PER_REPLICA_BATCH", "4")))
    lines = []

    def log(msg):
        sys.stderr.write(msg + "\n")
        if msg.startswith("["):  # a non-chief worker's prefix, "[worker 1] step ..."
            msg = msg.split("] ", 1)[1]
        if msg.startswith("step "):
            parts = msg.split()
            lines.append({"step": int(parts[1].split("/")[0]), "loss": float(parts[4])})
    summary = train.Trainer(cfg, "unused", model_dir, log=log).run()
    print(json.dumps({"trajectory": lines, "summary": summary}))


if __name__ == "__main__":
    main()
