"""Checkpoint -> model bundle: frozen GraphDef (for ATC), ONNX (for ONNX Runtime), metadata, labels.

The frozen graph is built directly in graph mode with the weights as constants, so it holds no
variable ops and exactly the names ATC and the service expect (`input`, `logits`). The ONNX model
is converted from that same graph by tf2onnx. Before anything is written, both are run on random
inputs at several batch sizes and compared; the bundle records the measured difference.
The bundle is assembled in a temporary sibling directory and renamed into place, so a failed
export leaves nothing behind and a reader never sees half a bundle.
"""
import datetime
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from . import __version__, bundle, checkpoint, net, specs, tf_preprocess, runinfo, onnx_classifier
from .errors import MbV3Error

INPUT, OUTPUT = "input", "logits"
ONNX_OPSET = 13
# Every op the frozen graph may hold; all exist in TensorFlow 1.15 and 2.6 and in ATC's TF parser.
TF115_OPS = frozenset([
    "Placeholder", "Const", "Identity", "Conv2D", "DepthwiseConv2dNative", "FusedBatchNormV3",
    "BiasAdd", "Relu", "Relu6", "AddV2", "Mul", "Mean", "Squeeze",
])
PARITY_TOLERANCE = 1e-4   # max |onnx - tf| relative to the logits' scale (max |logit|)
PARITY_BATCHES = (1, 3)


def frozen_graph(resolved, values, num_classes, image_size, numerics=None):
    """A GraphDef: placeholder `input` float32 [None, image_size, image_size, 3] -> `logits` [None, num_classes]."""
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, image_size, image_size, 3], name=INPUT)
        params = {name: tf.constant(value, name=name) for name, value in values.items()}
        logits = net.forward(resolved, params, images, training=False, numerics=numerics, num_classes=num_classes)
        tf.identity(logits, name=OUTPUT)
    graph_def = graph.as_graph_def()
    foreign = sorted(set(n.op for n in graph_def.node) - TF115_OPS)
    if foreign:
        raise MbV3Error("frozen graph uses ops outside the TF 1.15/2.6 set ATC expects: %s" % ", ".join(foreign))
    return graph_def


def run_frozen(graph_def, batch):
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as sess:
        return sess.run(OUTPUT + ":0", {INPUT + ":0": batch})


def _scalars_as_vectors(graph_def):
    """A copy with float scalar constants as shape [1]: the same broadcast arithmetic, but tf2onnx's
    transpose optimizer (which removes the NHWC<->NCHW transposes around every conv) fails on scalar
    addends and leaves the transposes in."""
    out = tf.compat.v1.GraphDef()
    out.CopyFrom(graph_def)
    for node in out.node:
        tensor = node.attr["value"].tensor if node.op == "Const" else None
        if tensor is not None and tensor.dtype == tf.float32.as_datatype_enum and not tensor.tensor_shape.dim:
            tensor.tensor_shape.dim.add().size = 1
    return out


def to_onnx(graph_def, opset=ONNX_OPSET):
    """ONNX ModelProto with graph input `input` [batch, H, W, 3] and output `logits` [batch, classes]."""
    import tf2onnx
    model, _ = tf2onnx.convert.from_graph_def(
        _scalars_as_vectors(graph_def), input_names=[INPUT + ":0"], output_names=[OUTPUT + ":0"], opset=opset)
    renames = {INPUT + ":0": INPUT, OUTPUT + ":0": OUTPUT}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(model.graph.input) + list(model.graph.output):
        value.name = renames.get(value.name, value.name)
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    import onnx
    onnx.checker.check_model(model)
    return model


def verify(graph_def, onnx_bytes, image_size, seed=0):
    """Largest |onnx - frozen graph| over random batches, relative to the logits' scale."""
    rng = np.random.default_rng(seed)
    session = onnx_classifier.onnx_session(onnx_bytes)
    worst = 0.0
    scale = 0.0
    for n in PARITY_BATCHES:
        batch = rng.uniform(-1, 1, (n, image_size, image_size, 3)).astype(np.float32)
        ref = run_frozen(graph_def, batch)
        got = session.run([OUTPUT], {INPUT: batch})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    relative = worst / max(scale, 1e-12)
    if not relative <= PARITY_TOLERANCE:
        raise MbV3Error("ONNX model disagrees with the frozen graph: max difference %.3g (%.3g of the logits' "
                        "scale, tolerance %g)" % (worst, relative, PARITY_TOLERANCE))
    return {"batch_sizes": list(PARITY_BATCHES), "max_abs_diff": worst, "logit_scale": scale,
            "relative": relative, "tolerance": PARITY_TOLERANCE}


def _prepare_output(output):
    """The parent exists and is writable; `output` is absent, empty, or an earlier bundle."""
    output = os.path.abspath(os.path.expanduser(output))
    parent = os.path.dirname(output)
    if os.path.exists(output):
        if not os.path.isdir(output):
            raise MbV3Error("output %s exists and is not a directory" % output)
        if os.listdir(output) and not os.path.exists(os.path.join(output, bundle.METADATA)):
            raise MbV3Error("output %s is a non-empty directory that is not a model bundle; "
                            "refusing to overwrite it" % output)
    try:
        if not os.path.isdir(parent):
            os.makedirs(parent)
        tmp = tempfile.mkdtemp(prefix=".%s.tmp-" % os.path.basename(output), dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the bundle from a service user
    except OSError as e:
        raise MbV3Error("cannot write to %s: %s" % (parent, e.strerror or e))
    return output, tmp


def _install(tmp, output):
    """Rename the finished bundle into place (replacing an earlier bundle at the same path)."""
    old = None
    if os.path.exists(output):
        old = output + ".old-%d" % os.getpid()
        os.rename(output, old)
    os.rename(tmp, output)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def export(checkpoint_path, output, num_classes=None, use_ema=None, variant=None, image_size=None,
           labels_file=None, name=None, version=None, override_run=False, notice=None, log=print):
    """Write a model bundle for a checkpoint; returns its metadata. notice: model.json's `notice`.

    The input size, preprocessing, weights and labels are the checkpoint's training run's (its
    config.yaml and labels.txt, see mbv3.runinfo); a flag that contradicts the run is an error unless
    override_run. A checkpoint without a run gets TF-slim's defaults (224) unless the flags say otherwise."""
    reader = checkpoint.Reader(checkpoint_path)
    arch = checkpoint.detect_architecture(reader.shapes)
    if variant and variant != arch.variant:
        raise MbV3Error("checkpoint %s holds MobileNetV3 %s, not %s" % (reader.prefix, arch.describe(), variant))
    if not arch.num_classes:
        raise MbV3Error("checkpoint %s has no classifier (%s/weights); nothing to export" % (reader.prefix, specs.LOGITS_SCOPE))
    if num_classes and num_classes != arch.num_classes:
        raise MbV3Error("checkpoint %s has a %d-class classifier, not %d" % (reader.prefix, arch.num_classes, num_classes))
    chosen = runinfo.choose(reader, arch, image_size, use_ema, labels_file, override_run)
    image_size, labels = chosen.size, chosen.labels
    prep = tf_preprocess.eval_record(image_size)
    output, tmp = _prepare_output(output)
    try:
        resolved = specs.resolve(arch.variant, arch.multiplier)
        variables = specs.variable_specs(resolved, arch.num_classes)
        values, report = checkpoint.read_values(reader.prefix, variables, use_ema=chosen.use_ema, reader=reader)
        log(report.summary())
        log(chosen.describe(prep, "EMA" if report.used_ema else "raw"))
        log("freezing the graph (%s, input %dx%d)" % (arch.describe(), image_size, image_size))
        numerics = chosen.run.numerics if chosen.run is not None else None   # the run's batch-norm epsilon
        graph_def = frozen_graph(resolved, values, arch.num_classes, image_size, numerics)
        log("converting to ONNX (opset %d)" % ONNX_OPSET)
        onnx_bytes = to_onnx(graph_def).SerializeToString()
        parity = verify(graph_def, onnx_bytes, image_size)
        log("ONNX vs frozen graph: max |diff| %.2e (%.1e of the logits' scale)" % (parity["max_abs_diff"], parity["relative"]))
        with open(os.path.join(tmp, bundle.FROZEN), "wb") as f:
            f.write(graph_def.SerializeToString())
        with open(os.path.join(tmp, bundle.ONNX), "wb") as f:
            f.write(onnx_bytes)
        bundle.write_labels(os.path.join(tmp, bundle.LABELS), labels)
        trainable, _ = specs.count_parameters(arch.variant, arch.multiplier, arch.num_classes)
        info = bundle.ModelInfo(
            name=name or "mobilenet_v3_%s_%s" % (arch.variant, arch.multiplier),
            version=str(version if version is not None else (report.step if report.step is not None else 1)),
            created=datetime.datetime.utcnow().replace(microsecond=0).isoformat() + "Z",
            exporter="mbv3 %s, TensorFlow %s" % (__version__, tf.__version__),
            source=bundle.Source(checkpoint=os.path.abspath(reader.prefix), step=report.step,
                                 weights="ema" if report.used_ema else "raw",
                                 run=chosen.run.folder if chosen.run else None,
                                 differs_from_run=chosen.differs or None),
            architecture=specs.Architecture(variant=arch.variant, multiplier=arch.multiplier,
                                            trainable_parameters=trainable),
            input=bundle.TensorInfo(name=INPUT, shape=[-1, image_size, image_size, 3], layout="NHWC",
                                    dtype="float32", range=[-1.0, 1.0]),
            output=bundle.TensorInfo(name=OUTPUT, shape=[-1, arch.num_classes], dtype="float32", kind="logits",
                                     num_classes=arch.num_classes),
            labels=bundle.label_info(labels),
            preprocessing=prep,
            frozen_graph={"file": bundle.FROZEN, "ops": sorted(set(n.op for n in graph_def.node))},
            onnx={"file": bundle.ONNX, "opset": ONNX_OPSET},
            verification={"onnx_vs_frozen_graph": parity},
            notice=notice,
        )
        for fname in sorted(os.listdir(tmp)):
            info.files[fname] = bundle.file_info(os.path.join(tmp, fname))
        with open(os.path.join(tmp, bundle.METADATA), "w") as f:
            f.write(info.to_json())
        _install(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log("wrote bundle %s" % output)
    return info.to_dict()
