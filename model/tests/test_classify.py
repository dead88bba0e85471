"""Softmax and the k best classes: the one ranking the service, `mbv3 predict` and both evals share."""
import numpy as np

from mbv3 import classify


def test_softmax_is_stable_and_sums_to_one():
    p = classify.softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), 0.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], atol=1e-12)
    assert np.isfinite(p).all()


def test_ties_go_to_the_lower_index_and_k_is_capped_by_the_classes():
    logits = np.array([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    assert classify.top_k_indices(logits, 3).tolist() == [[1, 2, 3], [0, 1, 2]]
    assert classify.top_k_indices(logits, 10).shape == (2, 4)


def test_the_skipped_background_is_never_a_prediction_but_keeps_its_probability_mass():
    probs = classify.softmax(np.array([[5.0, 1.0, 2.0, 0.0]]))
    (best,) = classify.top_k(probs, ["background", "a", "b", "c"], k=2, skip=0)
    assert [(i, label) for i, label, _ in best] == [(2, "b"), (1, "a")]
    assert best[0][2] == float(probs[0, 2]) and best[0][2] < 0.05
    assert classify.top_k_indices(probs, 5, skip=0).tolist() == [[2, 1, 3]]
