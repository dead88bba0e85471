"""Bundle -> Ascend `.om` with ATC (CANN's model converter), driven by the bundle's model.json.

The command is generated from the bundle (input name and size, layout), with dynamic batch
profiles so the service can micro-batch on the card, and optionally an AIPP stage that folds the
[-1, 1] normalisation into the model so the card takes uint8 RGB. After ATC succeeds, model.json
records how the .om was built (the record the service's ACL backend reads). ATC itself exists only
where the CANN toolkit is installed (the train-npu image); elsewhere `mbv3 om --print` shows the
command.

--soc_version is "Ascend" plus the chip name `npu-smi info` reports for the card that will run the
model (its Name column: 310, 310P3, 910A, 910B3, ... -> Ascend310, Ascend310P3, ...), as Huawei's
ATC samples build it (Ascend/ModelZoo-PyTorch's ACL_PyTorch READMEs: `--soc_version=Ascend${chip_name}`
after `npu-smi info`). It is the serving chip's, not the converting machine's: the conversion usually
runs on the 910 fine-tune host, whose npu-smi would name the wrong target, so npu-smi is asked only
when the user says `--soc-version auto`. Only its form is checked here: ATC knows which chips the
installed toolkit supports.
"""
import io
import os
import re
import shutil
import subprocess

from . import bundle
from .errors import MbV3Error

SOC_VERSION_FORM = re.compile(r"^Ascend[0-9]{3}[A-Za-z0-9_]*$")
SOC_VERSION_EXAMPLES = "Ascend310, Ascend310P3, Ascend910A, Ascend910B3"
# The serving chip, the one choice (ASCEND_CHIP for make, compose and `mbv3 om`) that sets together the
# inference image's base (docker/infer-ascend.Dockerfile's stage per chip), ATC's --soc_version (this table) and
# the Kubernetes overlay (deploy/overlays/ascend310, ascend310p: resource huawei.com/Ascend310 or Ascend310P).
# Keys are the Name column of `npu-smi info` on the serving card; 310 = Atlas 300I (Ascend/ascend-docker-image's
# nnrt `ascend-infer` base), 310P3 = Atlas 300I Pro / 300V (Ascend/cann-container-image's 310p base).
CHIPS = {"310": "Ascend310", "310P3": "Ascend310P3"}
DEFAULT_CHIP = "310"
DEFAULT_SOC_VERSION = CHIPS[DEFAULT_CHIP]
AUTO = "auto"   # --soc-version auto: "Ascend" + the chip `npu-smi info` reports on this machine
NPU_SMI = "npu-smi"
# `npu-smi info`'s device rows read `| <NPU> <Name> | <Health> | ...`, the chip rows under them
# `| <Chip> <Device> | <Bus-Id> | ...`; Health is one of these (the Atlas 300I Pro manual's npu-smi info page)
NPU_SMI_HEALTH = ("OK", "WARNING", "ALARM", "CRITICAL", "UNKNOWN")
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


def check_soc_version(soc_version):
    if not SOC_VERSION_FORM.match(soc_version or ""):
        raise MbV3Error("soc_version %r: it is \"Ascend\" plus the chip name `npu-smi info` reports on the card that "
                        "will run the model (%s, ...)" % (soc_version, SOC_VERSION_EXAMPLES))
    return soc_version


def npu_smi_chips(text):
    """The chip names in `npu-smi info` output, one per device row."""
    chips = []
    for line in text.splitlines():
        cells = [c.split() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and len(cells[0]) == 2 and cells[0][0].isdigit() and cells[1] \
                and cells[1][0].upper() in NPU_SMI_HEALTH:
            chips.append(cells[0][1])
    return chips


def local_chip(npu_smi=NPU_SMI):
    """The chip `npu-smi info` reports on this machine, or None where there is no npu-smi."""
    if shutil.which(npu_smi) is None:
        return None
    try:
        result = subprocess.run([npu_smi, "info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MbV3Error("`%s info` failed: %s; give --soc-version" % (npu_smi, e))
    chips = sorted(set(npu_smi_chips(result.stdout)))
    if result.returncode != 0 or not chips:
        tail = " ".join(result.stdout.strip().splitlines()[-2:])
        raise MbV3Error("`%s info` (exit %d) named no chip: %s; give --soc-version" % (npu_smi, result.returncode,
                                                                                      tail or "no output"))
    if len(chips) > 1:
        raise MbV3Error("`%s info` lists several chips (%s); give --soc-version for the one that will run the model"
                        % (npu_smi, ", ".join(chips)))
    return chips[0]


def chip_soc_version(chip):
    """ATC's --soc_version for a serving chip named as in CHIPS."""
    if chip not in CHIPS:
        raise MbV3Error("ASCEND_CHIP %r: one of %s (the serving card's chip as `npu-smi info` names it)"
                        % (chip, ", ".join(sorted(CHIPS))))
    return CHIPS[chip]


def resolve_soc_version(given=None, chip=None, npu_smi=NPU_SMI):
    """(soc_version, where it came from): the user's; "auto": "Ascend" + the chip npu-smi reports here;
    else the serving chip's (ASCEND_CHIP, default DEFAULT_CHIP)."""
    if given and given != AUTO:
        return check_soc_version(given), "given"
    if given == AUTO:
        found = local_chip(npu_smi)
        if found is None:
            raise MbV3Error("--soc-version auto: no `%s` on this machine; give --soc-version or ASCEND_CHIP" % npu_smi)
        return check_soc_version("Ascend" + found), "the chip `npu-smi info` reports on this machine; the .om runs " \
                                                    "on that chip only"
    if chip:
        return chip_soc_version(chip), "ASCEND_CHIP=%s" % chip
    return DEFAULT_SOC_VERSION, "the default serving chip %s (ASCEND_CHIP); the .om runs on that chip only" \
        % DEFAULT_CHIP


def command(bundle_dir, info, soc_version=DEFAULT_SOC_VERSION, batch_profiles=DEFAULT_PROFILES, aipp=False,
            atc="atc", precision_mode=None):
    """The ATC argument list (writes <bundle>/model.om); the input size is the bundle's."""
    check_soc_version(soc_version)
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
        raise MbV3Error("ATC (%s) not found: run `make om` (the convert image), or source CANN's "
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
