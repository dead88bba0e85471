import numpy as np
import pytest
import tensorflow as tf

from mbv3 import net, specs


@pytest.mark.parametrize("variant,num_classes,trainable,moving", [
    ("large", 1001, 5484313, 24400),   # slim's V3_LARGE 1.0
    ("large", 1000, 5483032, 24400),   # torchvision's mobilenet_v3_large
    ("small", 1000, 2542856, 12112),   # torchvision's mobilenet_v3_small
])
def test_parameter_counts(variant, num_classes, trainable, moving):
    assert specs.count_parameters(variant, 1.0, num_classes) == (trainable, moving)


def test_built_model_has_the_counted_variables():
    model = net.MobileNetV3("large", 1.0, 1001)
    assert sum(int(np.prod(v.shape)) for v in model.trainable_variables) == 5484313
    moving = [v for n, v in model.variables.items() if model.specs[n].kind in specs.MOVING_KINDS]
    assert sum(int(np.prod(v.shape)) for v in moving) == 24400
    assert all(not v.trainable for v in moving)


def test_slim_variable_names_and_shapes():
    variables = specs.variable_specs(specs.resolve("large"), 1001)
    expected = {
        "MobilenetV3/Conv/weights": (3, 3, 3, 16),
        "MobilenetV3/Conv/BatchNorm/gamma": (16,),
        "MobilenetV3/Conv/BatchNorm/moving_variance": (16,),
        "MobilenetV3/expanded_conv/depthwise/depthwise_weights": (3, 3, 16, 1),
        "MobilenetV3/expanded_conv/project/weights": (1, 1, 16, 16),
        "MobilenetV3/expanded_conv_1/expand/weights": (1, 1, 16, 64),
        "MobilenetV3/expanded_conv_3/squeeze_excite/Conv/weights": (1, 1, 72, 24),
        "MobilenetV3/expanded_conv_3/squeeze_excite/Conv/biases": (24,),
        "MobilenetV3/expanded_conv_3/squeeze_excite/Conv_1/weights": (1, 1, 24, 72),
        "MobilenetV3/expanded_conv_3/depthwise/depthwise_weights": (5, 5, 72, 1),
        "MobilenetV3/expanded_conv_8/expand/weights": (1, 1, 80, 184),
        "MobilenetV3/expanded_conv_14/project/BatchNorm/beta": (160,),
        "MobilenetV3/Conv_1/weights": (1, 1, 160, 960),
        "MobilenetV3/Conv_2/weights": (1, 1, 960, 1280),
        "MobilenetV3/Conv_2/biases": (1280,),
        "MobilenetV3/Logits/Conv2d_1c_1x1/weights": (1, 1, 1280, 1001),
        "MobilenetV3/Logits/Conv2d_1c_1x1/biases": (1001,),
    }
    for name, shape in expected.items():
        assert variables[name].shape == shape, name
    # the first block has no expansion (16 -> 16), and Conv_2 has no batch norm
    assert "MobilenetV3/expanded_conv/expand/weights" not in variables
    assert "MobilenetV3/Conv_2/BatchNorm/gamma" not in variables
    assert sum(1 for n in variables if n.endswith("/project/weights")) == 15
    assert all(n.startswith("MobilenetV3/") for n in variables)


def test_weight_decay_applies_to_conv_weights_only():
    variables = specs.variable_specs(specs.resolve("large"), 1001)
    regularized = {n for n, s in variables.items() if s.regularized}
    assert "MobilenetV3/Conv/weights" in regularized
    assert "MobilenetV3/expanded_conv_3/squeeze_excite/Conv/weights" in regularized
    assert "MobilenetV3/Logits/Conv2d_1c_1x1/weights" in regularized
    assert all(n.endswith("/weights") for n in regularized)
    assert not any("depthwise_weights" in n or "BatchNorm" in n or n.endswith("biases") for n in regularized)


def test_make_divisible_matches_slim():
    assert specs.make_divisible(16 * 0.35, 8) == 8
    assert specs.make_divisible(24 * 0.75, 8) == 24     # 18 -> 16 is below 90% of 18, so 24
    assert specs.make_divisible(160 * 0.75, 8) == 120
    assert specs.make_divisible(184, 8) == 184
    assert specs.make_divisible(72 / 4, 8) == 24
    resolved = specs.resolve("large", 0.75)
    assert resolved[0].out_ch == 16 and resolved[-1].out_ch == 1280  # finegrain: last layer unscaled


def test_minimalistic_is_a_transform_of_the_spec():
    mini = specs.VARIANTS["large_minimalistic"]
    assert len(mini) == len(specs.V3_LARGE)
    assert all(l.act == specs.RELU and not l.se for l in mini)
    assert all(l.kernel == 3 for l in mini if l.kind == "block")
    assert [l.filters for l in mini] == [l.filters for l in specs.V3_LARGE]


def test_activations_match_slim_formulas():
    x = tf.constant(np.linspace(-5, 5, 101, dtype=np.float32))
    xs = x.numpy()
    np.testing.assert_allclose(net.hard_swish(x).numpy(),
                               xs * np.clip(xs + 3, 0, 6) * np.float32(1. / 6.), rtol=1e-6)
    # slim's gate uses 0.16667, not 1/6: at x = 3 it is 1.00002, not 1
    np.testing.assert_allclose(net.hard_sigmoid(x).numpy(), np.clip(xs + 3, 0, 6) * np.float32(0.16667), rtol=1e-6)
    assert net.hard_sigmoid(tf.constant([3.0])).numpy()[0] == pytest.approx(1.00002, abs=1e-6)


@pytest.mark.parametrize("variant", list(specs.VARIANTS))
def test_every_variant_runs(variant):
    model = net.MobileNetV3(variant, 1.0, num_classes=11)
    logits = model(tf.random.uniform([2, 96, 96, 3], -1, 1))
    assert logits.shape == (2, 11)
    assert np.isfinite(logits.numpy()).all()


@pytest.mark.parametrize("variant", ["large", "small"])
def test_inference_in_a_tf_function(variant):
    """Grappler rewrites graphs, not eager ops: a oneDNN fusion once broke squeeze-excite here."""
    model = net.MobileNetV3(variant, 1.0, num_classes=11)
    images = tf.random.uniform([3, 64, 64, 3], -1, 1, seed=3)
    graph = tf.function(lambda x: model(x, training=False))(images).numpy()
    np.testing.assert_allclose(graph, model(images).numpy(), rtol=1e-4, atol=1e-4 * np.abs(graph).max())


def test_training_mode_uses_batch_statistics_and_updates_moving_averages():
    numerics = net.Numerics(bn_decay=0.9, dropout_keep=1.0)
    model = net.MobileNetV3("small", 0.5, num_classes=5, numerics=numerics)
    images = tf.random.uniform([4, 64, 64, 3], -1, 1, seed=1)
    name = "MobilenetV3/Conv/BatchNorm/"
    before_mean = model.variables[name + "moving_mean"].numpy().copy()
    before_var = model.variables[name + "moving_variance"].numpy().copy()

    # the stem conv's batch statistics, computed by hand
    conv = tf.nn.conv2d(images, model.variables["MobilenetV3/Conv/weights"], [1, 2, 2, 1], "SAME").numpy()
    mean = conv.mean(axis=(0, 1, 2))
    n = conv.size // conv.shape[-1]
    var = conv.var(axis=(0, 1, 2)) * n / (n - 1)  # Bessel-corrected, as slim's fused batch norm

    inference = model(images, training=False).numpy()
    np.testing.assert_array_equal(model.variables[name + "moving_mean"].numpy(), before_mean)
    training = model(images, training=True).numpy()
    np.testing.assert_allclose(model.variables[name + "moving_mean"].numpy(),
                               0.9 * before_mean + 0.1 * mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.variables[name + "moving_variance"].numpy(),
                               0.9 * before_var + 0.1 * var, rtol=1e-4, atol=1e-5)
    # fresh moving statistics (0, 1) differ from the batch's, so the two modes must disagree
    assert np.abs(training - inference).max() > 1e-3


def test_dropout_only_in_training():
    model = net.MobileNetV3("small", 0.5, num_classes=5, numerics=net.Numerics(dropout_keep=0.5))
    images = tf.random.uniform([2, 64, 64, 3], -1, 1, seed=2)
    a, b = model(images).numpy(), model(images).numpy()
    np.testing.assert_array_equal(a, b)
    c, d = model(images, training=True).numpy(), model(images, training=True).numpy()
    assert np.abs(c - d).max() > 1e-4  # same batch statistics, different dropout masks
