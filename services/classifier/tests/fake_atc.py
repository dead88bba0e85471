"""A stand-in for CANN's `atc` that turns the command `mbv3 om` generates into a simulated .om
(tests/acl_sim): it reads the same arguments ATC takes, refuses an AIPP config whose normalisation
differs from the one the simulated device applies, and writes <--output>.om without touching
model.json (recording the build is mbv3's job)."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "acl_sim"))
import acl  # noqa: E402


def main(argv):
    args = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    assert args["framework"] == "3" and args["input_format"] == "NHWC", args
    model_dir = os.path.dirname(args["model"])
    profiles = [int(b) for b in args["dynamic_batch_size"].split(",")] if "dynamic_batch_size" in args else None
    aipp = "insert_op_conf" in args
    if aipp:
        cfg = open(args["insert_op_conf"]).read()
        for c in range(3):
            assert float(re.search(r"min_chn_%d: ([\d.e-]+)" % c, cfg).group(1)) == acl.AIPP_MIN_CHN, cfg
            assert abs(float(re.search(r"var_reci_chn_%d: ([\d.e-]+)" % c, cfg).group(1)) - acl.AIPP_VAR_RECI_CHN) < 1e-12
    acl.sim_write_om(model_dir, batch_profiles=profiles, aipp=aipp, filename=os.path.basename(args["output"]) + ".om",
                     update_metadata=False)
    print("ATC run success")


if __name__ == "__main__":
    main(sys.argv[1:])
