"""A stand-in for mbv3.data with a fixed, order-preserving example stream, for tests that must
compare training runs step by step (strategies, targets). Real TFRecords are tested elsewhere.

Each per-replica batch is written twice in a row, so one device with global batch 2B sees [A, A]
while two replicas with B each see A and A: identical batch-norm statistics and identical gradients
if (and only if) the strategy sums gradients correctly.
"""
import types

import numpy as np
import tensorflow as tf

N_CLASSES = 4  # plus background: num_classes 5
SEEN_CONTEXTS = []


def make(examples=64, per_replica_batch=4, size=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (examples, size, size, 3)).astype(np.float32)
    y = (np.arange(examples) % N_CLASSES + 1).astype(np.int32)
    x[..., 0] += ((y - 2.5) * 0.3)[:, None, None]
    blocks = []
    for start in range(0, examples, per_replica_batch):
        sl = slice(start, start + per_replica_batch)
        blocks += [(x[sl], y[sl]), (x[sl], y[sl])]
    xs = np.concatenate([b[0] for b in blocks])
    ys = np.concatenate([b[1] for b in blocks])

    def info(data_dir):
        return {"num_classes": N_CLASSES + 1}

    def num_examples(data_dir, split):
        return len(ys)

    def dataset(data_dir, split, batch_size, image_size, training, input_context=None, **kwargs):
        SEEN_CONTEXTS.append(input_context)
        ds = tf.data.Dataset.from_tensor_slices((xs, ys))
        return (ds.repeat() if training else ds).batch(batch_size, drop_remainder=training)

    return types.SimpleNamespace(info=info, num_examples=num_examples, dataset=dataset)
