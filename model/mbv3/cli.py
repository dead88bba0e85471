"""The `mbv3` command. Each subcommand imports what it needs, so `mbv3 --help` and `mbv3 predict`
never pay for TensorFlow they do not use. A subcommand that needs TensorFlow first checks its
arguments and paths without it (`_check_*`), so a mistyped path is one `mbv3: error:` line in a
fraction of a second rather than after TensorFlow's start-up, and imports TensorFlow through
console.import_tensorflow, which keeps its start-up lines off the terminal unless --verbose. User
errors print one line and exit 1."""
import argparse
import json
import logging
import os
import sys

from . import console
from .console import import_tensorflow, say
from . import __version__, checkpoint_paths, fast_preprocess, specs
from .errors import ImageError, MbV3Error

USER_ERROR = 1   # the exit status of every user error, argument errors included


def _check_checkpoint(path):
    """The path names a checkpoint or a directory of them; whether they can be read is left to
    mbv3.checkpoint, which needs TensorFlow."""
    checkpoint_paths.locate(path)


def _check_file(path, what):
    if path is not None and not os.path.isfile(os.path.expanduser(path)):
        raise MbV3Error("%s %s: %s" % (what, path, "is a directory" if os.path.isdir(path) else "no such file"))


def _check_folder(path, what):
    """A folder the command will write into: absent (it is made) or a directory."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise MbV3Error("%s %s exists and is not a directory" % (what, path))


def _check_data(data_dir):
    from .data import metadata
    metadata.load(data_dir)


def cmd_inspect(args):
    _check_checkpoint(args.checkpoint)
    import_tensorflow()
    from . import checkpoint
    reader = checkpoint.Reader(args.checkpoint)
    info = {"checkpoint": reader.prefix, "step": reader.step, "variables": len(reader.shapes),
            "model_variables": len(reader.model_names), "ema_shadows": reader.has_ema}
    try:
        arch = checkpoint.detect_architecture(reader.shapes)
    except MbV3Error as e:
        arch, info["variant"], info["problem"] = None, None, str(e)
    else:
        trainable, moving = specs.count_parameters(arch.variant, arch.multiplier, arch.num_classes)
        info.update(variant=arch.variant, multiplier=arch.multiplier, num_classes=arch.num_classes,
                    trainable_parameters=trainable, batchnorm_statistics=moving)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print("checkpoint   %s" % info["checkpoint"])
        print("step         %s" % info["step"])
        print("variables    %d (%d model variables; the rest optimizer slots, EMA shadows, global_step)"
              % (info["variables"], info["model_variables"]))
        print("EMA shadows  %s" % ("yes" if info["ema_shadows"] else "no"))
        if arch:
            print("variant      MobileNetV3 %s, depth multiplier %s, %d classes (%s trainable parameters)"
                  % (arch.variant, arch.multiplier, arch.num_classes, format(info["trainable_parameters"], ",")))
        else:
            print("variant      unknown: %s" % info["problem"])
    if arch is None:   # what was read is shown above; the exit status and one line say it is no MobileNetV3
        raise MbV3Error(info["problem"])
    return 0


def cmd_init(args):
    _check_folder(args.model_dir, "--model-dir")
    import_tensorflow()
    from . import checkpoint, net
    # any checkpoint file, readable or not, is someone's run: never write a step 0 among them
    found = checkpoint.found_in(args.model_dir)
    if found:
        raise MbV3Error("%s already holds checkpoint files (%s); choose an empty directory" % (args.model_dir, found[0]))
    model = net.MobileNetV3(args.variant, args.multiplier, args.num_classes, seed=args.seed)
    prefix = checkpoint.save(args.model_dir, 0, model.variables)
    say("wrote %s: MobileNetV3 %s %s, %d classes, randomly initialised (step 0)"
         % (prefix, args.variant, args.multiplier, args.num_classes))
    return 0


def cmd_export(args):
    _check_checkpoint(args.checkpoint)
    _check_file(args.labels, "--labels")
    _check_folder(os.path.abspath(args.output), "output")
    import_tensorflow()
    from . import export
    export.export(args.checkpoint, args.output, num_classes=args.num_classes, use_ema=args.ema,
                  variant=args.variant, image_size=args.image_size, labels_file=args.labels,
                  name=args.name, version=args.version, override_run=args.override_run, log=say)
    return 0


def cmd_predict(args):
    import numpy as np
    from . import numpy_preprocess, onnx_classifier
    clf = onnx_classifier.OnnxClassifier(args.bundle, args.threads, args.precision)
    prep = clf.bundle.preprocessing
    failures = 0
    for path in args.images:
        try:
            with open(path, "rb") as f:
                rgb = numpy_preprocess.decode(f.read())
        except (IOError, OSError, ImageError) as e:
            say("mbv3: error: %s: %s" % (path, getattr(e, "strerror", None) or e))
            failures += 1
            continue
        batch = numpy_preprocess.eval_transform(rgb, prep=prep)[np.newaxis]
        print(path)
        for rank, (index, label, prob) in enumerate(clf.classify(batch, args.top_k)[0], 1):
            print("  %d. %-40s %.4f  (class %d)" % (rank, label[:40], prob, index))
    return 1 if failures else 0


def cmd_verify(args):
    from . import onnx_classifier
    loaded = onnx_classifier.verify_bundle(args.bundle)
    info = loaded.info
    print("%s: ok: %s v%s, %d classes, input %dx%d, %d files match their sha256%s" % (
        loaded.path, info.name, info.version, info.num_classes, info.preprocessing.height, info.preprocessing.width,
        len(info.files), ", model.om built for %s" % info.om.soc_version if info.om else ""))
    return 0


def cmd_benchmark(args):
    if args.reference:
        from . import bundle
        bundle.load(args.bundle)   # a wrong path fails before TensorFlow's start-up
        import_tensorflow()
    from . import benchmark
    results = benchmark.run(args.bundle, args.batch, args.threads, min_seconds=args.seconds,
                            reference=args.reference, log=print)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        say("wrote %s" % args.json)
    return 0


def cmd_data_build(args):
    if not os.path.isdir(args.images):
        raise MbV3Error("no image folder at %s" % os.path.abspath(args.images))
    _check_file(args.labels, "--labels")
    _check_file(args.val_labels, "--val-labels")
    _check_folder(args.output, "--output")
    import_tensorflow()
    from . import data
    summary = data.build(args.images, args.output, shards=args.shards, labels_file=args.labels,
                         val_split=args.val_split, val_labels_file=args.val_labels, workers=args.workers,
                         seed=args.seed, log=say)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_train(args):
    from . import config
    config.load(args.config, args.set)
    _check_data(args.data)
    _check_folder(args.model_dir, "--model-dir")
    import_tensorflow()
    from . import train
    summary = train.train(args.config, args.data, args.model_dir, overrides=args.set)
    if summary["stopped_by_signal"]:
        say("stopped at step %d of %d by signal %d; latest checkpoint %s; rerun the same command to resume"
             % (summary["step"], summary["total_steps"], summary["stopped_by_signal"], summary["checkpoint"]))
        return 128 + summary["stopped_by_signal"]
    say("done: step %d of %d, latest checkpoint %s" % (summary["step"], summary["total_steps"], summary["checkpoint"]))
    return 0


def cmd_eval(args):
    if args.bundle:
        given = [flag for flag, value in (("--ema/--no-ema", args.ema), ("--image-size", args.image_size))
                 if value is not None]
        if given:
            raise MbV3Error("%s applies to --checkpoint; a bundle's weights and input size are fixed in its model.json"
                            % " and ".join(given))
        from . import bundle, onnx_classifier
        onnx_classifier.model_file(bundle.load(args.bundle).info, args.precision or "f32")   # before TensorFlow
        _check_data(args.data)
        import_tensorflow()
        from . import bundle_eval
        result = bundle_eval.evaluate(args.bundle, args.data, split=args.split, batch_size=args.batch_size,
                                      threads=args.threads or 0, preprocessing=args.preprocessing or "reference",
                                      precision=args.precision or "f32")
    else:
        given = [flag for flag, value in (("--threads", args.threads), ("--preprocessing", args.preprocessing),
                                          ("--precision", args.precision)) if value is not None]
        if given:
            raise MbV3Error("%s %s to --bundle (ONNX Runtime)" % (" and ".join(given), "applies" if len(given) == 1 else "apply"))
        _check_checkpoint(args.checkpoint)
        _check_data(args.data)
        import_tensorflow()
        from . import evaluate
        result = evaluate.evaluate(args.checkpoint, args.data, use_ema=args.ema, split=args.split,
                                   batch_size=args.batch_size, image_size=args.image_size)
    print(json.dumps(result, indent=2))
    return 0


def cmd_default_bundle(args):
    if args.model:
        from . import bundle
        path = os.path.abspath(os.path.expanduser(args.model))
        if not os.path.isfile(os.path.join(path, bundle.METADATA)):   # a checkpoint: exported with TensorFlow
            try:
                if not os.path.isdir(path):   # a folder may hold the checkpoint further down (an unpacked archive)
                    _check_checkpoint(path)
            except MbV3Error as e:
                raise MbV3Error("MODEL=%s is neither a model bundle (no %s) nor a checkpoint: %s"
                                % (args.model, bundle.METADATA, e))
    for name in ("tensorflow", "tf2onnx"):  # the quickstart imports TensorFlow only to export or train
        logging.getLogger(name).setLevel(logging.ERROR)
    from . import quickstart
    # the path is the only line on stdout (the Makefile captures it); every log line goes to stderr
    print(quickstart.resolve(args.model or None, args.cache, args.official_url, log=say))
    return 0


def cmd_om(args):
    from . import atc, bundle
    profiles = [] if args.static else args.batch_profiles
    loaded = bundle.load(args.bundle)   # a wrong path is the only line, not after the soc_version's
    soc_version, source = atc.resolve_soc_version(args.soc_version, os.environ.get("ASCEND_CHIP") or None)
    if source != "given":
        say("soc_version %s (%s)" % (soc_version, source))
    if args.print:
        print(" ".join(atc.command(loaded.path, loaded.info, soc_version, profiles, args.aipp, args.atc,
                                   args.precision_mode)))
        if args.aipp:
            print("# %s:\n%s" % (atc.AIPP_FILE, atc.aipp_config(loaded.info)))
        return 0
    atc.build(args.bundle, soc_version, profiles, args.aipp, args.atc, args.precision_mode, log=say)
    return 0


def cmd_quantize(args):
    from . import precision
    options = dict(max_top1_drop=args.max_top1_drop, engines=args.engines, calibration=args.calibration,
                   calibration_split=args.calibration_split, calibration_size=args.calibration_size,
                   output=args.output)
    precision.check_arguments(args.bundle, args.data, args.split, args.precision, **options)
    import_tensorflow()   # reads the TFRecords
    variants = precision.measure(args.bundle, args.data, precision=args.precision, split=args.split, force=args.force,
                                 batch_size=args.batch_size, threads=args.threads, **options)
    print(json.dumps(precision.as_json(variants), indent=2))
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one `mbv3: error:` line and exit status 1 like every other user
    error (argparse's own is usage text and status 2); `--help` shows the usage."""

    def error(self, message):
        say("mbv3: error: %s: %s (see `%s --help`)" % (self.prog, message, self.prog))
        sys.exit(USER_ERROR)


class _Deprecated(argparse.Action):
    """An old spelling of a flag: stored under the new flag's name, with one line on stderr."""

    def __init__(self, option_strings, dest, new_flag, **kwargs):
        self.new_flag = new_flag
        super(_Deprecated, self).__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        say("mbv3: warning: %s is deprecated; use %s" % (option_string, self.new_flag))
        setattr(namespace, self.dest, values)


def _image_size_flag(s, help):
    """--image-size, the one spelling of the input size on the command line: the recipes' key is
    data.image_size and `mbv3 eval` reports image_size, so the flag says what users already set.
    export's earlier --input-size is still accepted."""
    s.add_argument("--image-size", type=_positive, help=help)
    s.add_argument("--input-size", dest="image_size", type=_positive, action=_Deprecated, new_flag="--image-size")


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser():
    from . import atc, calibration, onnx_classifier, precision  # no TensorFlow: the `om`, `quantize` and precision defaults
    p = _Parser(prog="mbv3", description="MobileNetV3: slim-compatible checkpoints, "
                "training, export to ONNX / frozen GraphDef, prediction.")
    p.add_argument("--version", action="version", version="mbv3 " + __version__)
    p.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's start-up and info logs "
                   "(also accepted after the command)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("inspect", help="show a checkpoint's step, variables, EMA shadows and variant")
    s.add_argument("checkpoint", help="checkpoint prefix or directory (its latest checkpoint)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(fn=cmd_inspect)

    s = sub.add_parser("init", help="write a randomly initialised step-0 checkpoint")
    s.add_argument("--model-dir", required=True)
    s.add_argument("--variant", default="large", choices=list(specs.VARIANTS))
    s.add_argument("--multiplier", type=float, default=1.0)
    s.add_argument("--num-classes", type=_positive, default=1001)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("data", help="build TF-slim-format TFRecords from an image folder")
    data_sub = s.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    b = data_sub.add_parser("build", help="ImageNet-layout folder (train/<class>/*, val/...) -> sharded TFRecords")
    b.add_argument("--images", required=True, help="folder with train/<class>/ (and val/ or validation/)")
    b.add_argument("--output", required=True, help="TFRecord folder (dataset.json, labels.txt, shards)")
    b.add_argument("--shards", type=_positive, help="train shards (default: about 1,000 images each)")
    b.add_argument("--labels", help="class names (wnids) one per line; their order defines the labels")
    b.add_argument("--val-split", type=float, default=0.0, help="hold out this fraction of train when there is no val/")
    b.add_argument("--val-labels", help="ground truth for a flat val/ folder")
    b.add_argument("--workers", type=_positive)
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=cmd_data_build)

    s = sub.add_parser("train", help="train or fine-tune (resumes from --model-dir's latest checkpoint)")
    s.add_argument("--config", required=True, help="recipe: a YAML file or a packaged name (gpu-4p, npu-finetune, ...)")
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a config value")
    s.add_argument("--data", required=True, help="TFRecord folder from `mbv3 data build`")
    s.add_argument("--model-dir", required=True, help="checkpoints, config.yaml, labels.txt, TensorBoard logs")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("eval", help="top-1/top-5 of a checkpoint, or of an exported bundle through the serving "
                       "path, over a whole split")
    source = s.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint prefix or run directory (TensorFlow)")
    source.add_argument("--bundle", help="an exported bundle: the server's NumPy/Pillow preprocessing and its "
                        "model.onnx in ONNX Runtime; writes <bundle>.eval-<split>.json")
    s.add_argument("--data", required=True)
    ema = s.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="ema", action="store_true", default=None, help="EMA shadow weights (error if absent)")
    ema.add_argument("--no-ema", dest="ema", action="store_false", help="raw weights")
    s.add_argument("--split", default="validation")
    s.add_argument("--batch-size", type=_positive, default=100)
    _image_size_flag(s, "default: the run's config.yaml, else 224")
    s.add_argument("--threads", type=int, help="--bundle: ONNX Runtime threads (default: ONNX Runtime's choice)")
    s.add_argument("--preprocessing", choices=fast_preprocess.CHOICES,
                   help="--bundle: reference (Pillow + NumPy, the default), fast (libjpeg-turbo + OpenCV, as the "
                   "service serves when they are installed) or auto, as the service's PREPROCESSING setting")
    s.add_argument("--precision", choices=list(onnx_classifier.PRECISIONS),
                   help="--bundle: f32 runs model.onnx (the default); int8 its validated %s (mbv3 quantize)"
                   % precision.INT8_FILE)
    s.set_defaults(fn=cmd_eval)

    s = sub.add_parser("export", help="write a model bundle (ONNX, frozen GraphDef, model.json, labels)")
    s.add_argument("--checkpoint", required=True, help="checkpoint prefix or directory")
    s.add_argument("--output", required=True, help="bundle directory (created; an earlier bundle is replaced)")
    s.add_argument("--num-classes", type=_positive, help="expected classifier size (checked, default: the checkpoint's)")
    s.add_argument("--variant", choices=list(specs.VARIANTS), help="expected variant (checked, default: detected)")
    ema = s.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="ema", action="store_true", default=None, help="use EMA shadow weights (error if absent)")
    ema.add_argument("--no-ema", dest="ema", action="store_false", help="use the raw weights")
    _image_size_flag(s, "default: the run's data.image_size (config.yaml beside the checkpoint), else 224")
    s.add_argument("--labels", help="labels file: num_classes lines, or num_classes-1 without background")
    s.add_argument("--name", help="model name recorded in model.json")
    s.add_argument("--version", help="model version recorded in model.json (default: the step)")
    s.add_argument("--override-run", action="store_true",
                   help="let --image-size, --no-ema and --labels differ from the checkpoint's training run "
                   "(recorded in model.json's source.differs_from_run); without it a contradiction is an error")
    s.set_defaults(fn=cmd_export)

    s = sub.add_parser("om", help="convert a bundle to an Ascend .om with ATC (CANN toolkit) and record it in model.json")
    s.add_argument("--bundle", required=True)
    s.add_argument("--soc-version",
                   help="\"Ascend\" + the chip name `npu-smi info` reports on the card that will run the model (%s, "
                   "...), or %s for this machine's chip; default: the serving chip's (env ASCEND_CHIP: %s; unset: %s)"
                   % (atc.SOC_VERSION_EXAMPLES, atc.AUTO, ", ".join("%s=%s" % kv for kv in sorted(atc.CHIPS.items())),
                      atc.DEFAULT_CHIP))
    s.add_argument("--batch-profiles", type=_positive, nargs="+", default=list(atc.DEFAULT_PROFILES),
                   help="dynamic batch profiles (ATC --dynamic_batch_size), so the service can micro-batch "
                   "(default: %s)" % " ".join(str(b) for b in atc.DEFAULT_PROFILES))
    s.add_argument("--static", action="store_true", help="batch 1 only, no profiles")
    s.add_argument("--aipp", action="store_true", help="fold the [-1, 1] normalisation in: the card takes uint8 RGB")
    s.add_argument("--precision-mode", help="ATC --precision_mode (default: ATC's)")
    s.add_argument("--atc", default="atc", help="the ATC executable")
    s.add_argument("--print", action="store_true", help="print the ATC command (and AIPP config) instead of running it")
    s.set_defaults(fn=cmd_om)

    s = sub.add_parser("quantize", help="make or validate a reduced-precision variant of a bundle against float32 on "
                       "held-out data (bf16: OpenVINO's hint; int8: NNCF-quantized models, one per engine) and record "
                       "it in its model.json")
    s.add_argument("--bundle", required=True)
    s.add_argument("--precision", required=True, choices=sorted(precision.NATIVE), help="bf16: OpenVINO's bfloat16 "
                   "inference hint on model.onnx; int8: NNCF post-training quantization into %s (OpenVINO) and %s (ONNX "
                   "Runtime)" % (precision.INT8_IR, precision.INT8_FILE))
    s.add_argument("--data", required=True, help="TFRecord folder from `mbv3 data build` (the run's own data)")
    s.add_argument("--split", default="validation", help="the held-out split to score (default: validation)")
    s.add_argument("--max-top1-drop", type=float, metavar="POINTS",
                   help="refuse a variant whose top-1 is more than this many points below float32's (default: %s)"
                   % ", ".join("%s for %s" % (v, k) for k, v in sorted(precision.DEFAULT_MAX_TOP1_DROP.items())))
    s.add_argument("--force", action="store_true", help="record the variant past the threshold, or on a CPU "
                   "without native support")
    s.add_argument("--engines", nargs="+", choices=list(precision.ENGINES),
                   help="the engines to validate on, one record each (default: openvino for bf16, %s for int8)"
                   % " ".join(precision.RUNS_ON["int8"]))
    s.add_argument("--calibration", metavar="FOLDER", help="int8: calibrate on this image folder (any depth) or "
                   "TFRecord data set instead of --data's --calibration-split")
    s.add_argument("--calibration-split", help="int8: the TFRecord split to calibrate on (default: %s)"
                   % calibration.DEFAULT_CALIBRATION_SPLIT)
    s.add_argument("--calibration-size", type=_positive, metavar="N", help="int8: calibration images (default: %d, "
                   "at least %d)" % (calibration.DEFAULT_CALIBRATION_SIZE, calibration.MIN_CALIBRATION))
    s.add_argument("--output", help="int8: write the quantized bundle as a copy of --bundle here (a new or empty "
                   "folder) instead of into --bundle")
    s.add_argument("--batch-size", type=_positive, default=precision.DEFAULT_BATCH)
    s.add_argument("--threads", type=int, default=0, help="inference threads in every engine (default: the engine's "
                   "choice)")
    s.set_defaults(fn=cmd_quantize)

    s = sub.add_parser("predict", help="top-k classes for images with a bundle (ONNX Runtime)")
    s.add_argument("--bundle", required=True)
    s.add_argument("--top-k", type=_positive, default=5)
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--precision", choices=list(onnx_classifier.PRECISIONS), default="f32",
                   help="f32 runs model.onnx; int8 the bundle's validated %s (mbv3 quantize)" % precision.INT8_FILE)
    s.add_argument("images", nargs="+")
    s.set_defaults(fn=cmd_predict)

    s = sub.add_parser("verify", help="check a bundle as a server does before serving: model.json, sha256s, labels, "
                       "the ONNX model's shapes")
    s.add_argument("--bundle", required=True)
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("benchmark", help="ONNX Runtime latency of a bundle, next to TensorFlow on its frozen graph")
    s.add_argument("--bundle", required=True)
    s.add_argument("--batch", type=_positive, nargs="+", default=[1, 8])
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--seconds", type=float, default=3.0, help="minimum timing per measurement")
    s.add_argument("--no-reference", dest="reference", action="store_false", help="skip the TensorFlow reference")
    s.add_argument("--json", help="also write the results to this file")
    s.set_defaults(fn=cmd_benchmark)

    s = sub.add_parser("default-bundle", help="print the bundle `make serve` runs: --model, else the official "
                       "ImageNet checkpoint (downloaded once), else the digits demo (trained once)")
    s.add_argument("--model", help="a bundle, or a checkpoint to export once into the cache")
    s.add_argument("--cache", help="cache directory (default: $MBV3_CACHE, else ~/.cache/mbv3)")
    s.add_argument("--official-url", help="where to fetch TF-slim's official checkpoint tarball, e.g. a mirror "
                   "(default: $MBV3_OFFICIAL_URL, else Google's storage)")
    s.set_defaults(fn=cmd_default_bundle)

    for command in list(sub.choices.values()) + list(data_sub.choices.values()):
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show TensorFlow's start-up and info logs")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    console.VERBOSE = args.verbose
    try:
        return args.fn(args)
    except MbV3Error as e:
        say("mbv3: error: %s" % e)
        return 1
    except KeyboardInterrupt:
        say("mbv3: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
