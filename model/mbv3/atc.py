"""Bundle -> Ascend `.om` with ATC (CANN's model converter), driven by the bundle's model.json.

The command is generated from the bundle (input name and size, layout), with dynamic batch
profiles so the service can micro-batch on the card, and optionally an AIPP stage that folds the
[-1, 1] normalisation into the model so the card takes uint8 RGB. After ATC succeeds, model.json
records how the .om was built (the record the service's ACL backend reads). ATC itself exists only
where the CANN toolkit is installed (the train-npu image); elsewhere `mbv3 om --print` shows the
command.
"""
import io
import os
import shutil
import subprocess

from . import bundle
from .errors import MbV3Error

SOC_VERSIONS = ("Ascend310", "Ascend310P3", "Ascend910", "Ascend910B")
DEFAULT_SOC_VERSION = "Ascend310"
DEFAULT_PROFILES = (1, 2, 4, 8, 16, 32)   # `mbv3 om` and `make om` use these unless given others
AIPP_FILE = bundle.AIPP_FILE


def aipp_config(info):
    """A static AIPP config for uint8 RGB input: out = (in - mean_chn - min_chn) * var_reci_chn, with
    mean_chn 0 and (min_chn, var_reci_chn) from the bundle's preprocessing record (its normalize())."""
    prep = info.preprocessing
    lines = ["aipp_op {", "    aipp_mode: static", "    input_format: RGB888_U8",
             "    src_image_size_w: %d" % prep.width, "    src_image_size_h: %d" % prep.height, "    csc_switch: false",
             "    rbuv_swap_switch: false"]
    for channel, (minimum, reciprocal) in enumerate(prep.aipp_channels()):
        lines += ["    mean_chn_%d: 0" % channel, "    min_chn_%d: %r" % (channel, minimum),
                  "    var_reci_chn_%d: %r" % (channel, reciprocal)]
    return "\n".join(lines + ["}", ""])


def command(bundle_dir, info, soc_version=DEFAULT_SOC_VERSION, batch_profiles=DEFAULT_PROFILES, aipp=False,
            atc="atc", precision_mode=None):
    """The ATC argument list (writes <bundle>/model.om); the input size is the bundle's."""
    if soc_version not in SOC_VERSIONS:
        raise MbV3Error("soc_version %r: choose one of %s" % (soc_version, ", ".join(SOC_VERSIONS)))
    inp = info.input
    _, height, width, channels = inp.shape
    profiles = sorted(set(int(b) for b in batch_profiles or ()))
    if profiles and not (2 <= len(profiles) <= 100 and profiles[0] >= 1):
        raise MbV3Error("ATC takes 2 to 100 positive batch profiles, got %s" % profiles)
    batch = -1 if profiles else 1
    args = [atc, "--framework=3", "--model=%s" % os.path.join(bundle_dir, bundle.FROZEN),
            "--output=%s" % os.path.join(bundle_dir, os.path.splitext(bundle.OM)[0]),
            "--input_format=NHWC", "--input_shape=%s:%d,%d,%d,%d" % (inp.name, batch, height, width, channels),
            "--soc_version=%s" % soc_version, "--output_type=FP32", "--log=error"]
    if profiles:
        args.append("--dynamic_batch_size=%s" % ",".join(str(b) for b in profiles))
    if aipp:
        args.append("--insert_op_conf=%s" % os.path.join(bundle_dir, AIPP_FILE))
    if precision_mode:
        args.append("--precision_mode=%s" % precision_mode)
    return args


def om_record(soc_version, batch_profiles, aipp):
    profiles = sorted(set(int(b) for b in batch_profiles or ())) or None
    return bundle.OmInfo(file=bundle.OM, batch_profiles=profiles, aipp=bool(aipp), soc_version=soc_version,
                             input_dtype="uint8" if aipp else "float32")


def build(bundle_dir, soc_version=DEFAULT_SOC_VERSION, batch_profiles=DEFAULT_PROFILES, aipp=False, atc="atc",
          precision_mode=None, log=print):
    """Run ATC on a bundle and record the result in its model.json; returns the om record."""
    loaded = bundle.load(bundle_dir)
    args = command(loaded.path, loaded.info, soc_version, batch_profiles, aipp, atc, precision_mode)
    if shutil.which(args[0]) is None:
        raise MbV3Error("ATC (%s) not found: run inside the train-npu image, or source CANN's "
                        "/usr/local/Ascend/ascend-toolkit/set_env.sh; `mbv3 om --print` shows the command" % args[0])
    if aipp:
        with io.open(os.path.join(loaded.path, AIPP_FILE), "w") as f:
            f.write(aipp_config(loaded.info))
    log("running: %s" % " ".join(args))
    result = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    om_path = loaded.file(bundle.OM)
    if result.returncode != 0 or not os.path.exists(om_path):
        tail = "\n".join(result.stdout.strip().splitlines()[-5:])
        raise MbV3Error("ATC failed (exit %d): %s" % (result.returncode, tail or "no output"))
    record = om_record(soc_version, batch_profiles, aipp)
    loaded.info.om = record
    loaded.info.files.pop(AIPP_FILE, None)
    for name in [bundle.OM] + ([AIPP_FILE] if aipp else []):
        loaded.info.files[name] = bundle.file_info(loaded.file(name))
    loaded.save_info()
    log("wrote %s (%s, batch profiles %s, AIPP %s)" % (om_path, soc_version, record.batch_profiles, record.aipp))
    return record
