"""Logits to answers, whatever ran the model: softmax, and the k best classes per row.

One definition for every runtime (ONNX Runtime, OpenVINO, ACL), the service, `mbv3 predict`, and both
evaluations (mbv3.scoring counts these indices): each ranks alike, ties to the lower index as
tf.math.top_k does. NumPy only, so the service imports it without TensorFlow or ONNX Runtime."""
import numpy as np


def softmax(logits):
    """Probabilities over the last axis, computed stably (the row's maximum subtracted first)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k_indices(scores, k, skip=None):
    """[N, min(k, classes)] class indices, best first, ties to the lower index. `skip` (slim's background
    index) is never among them. Logits and their softmax rank alike, so either may be given."""
    order = np.argsort(-np.asarray(scores), axis=-1, kind="stable")
    if skip is not None:
        order = order[order != skip].reshape(len(order), -1)
    return order[:, :k]


def top_k(probabilities, labels, k=5, skip=None):
    """Per row, the k best [(index, label, probability)], best first. `skip` (slim's background
    index) is never a prediction; probabilities stay those of the model's softmax over all classes."""
    return [[(int(i), labels[i], float(row[i])) for i in idx]
            for row, idx in zip(probabilities, top_k_indices(probabilities, k, skip))]
