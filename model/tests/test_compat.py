"""The package must run on CANN's TensorFlow 2.6.5 adapter under Python 3.7 (docs/ascend.md).

Neither can be installed here, so two static checks stand in: vermin proves the syntax and
standard-library use are valid Python 3.7, and every `tf.` name the package uses is looked up
in the public API list of the TensorFlow 2.6.5 wheel (tests/data, made by tools/tf_api_list.py).
What they do not prove: that TF 2.6 behaves identically (numerics, kernels) or that the CANN
adapter accepts every op; only a run on an Ascend 910 shows that.
"""
import ast
import os
import subprocess
import sys

import pytest

import mbv3

PACKAGE = os.path.dirname(os.path.abspath(mbv3.__file__))
HERE = os.path.dirname(os.path.abspath(__file__))
API_LIST = os.path.join(HERE, "data", "tf-2.6.5-api.txt")


def _vermin(path):
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    cmd = [vermin if os.path.exists(vermin) else "vermin", "-t=3.7-", "--violations", "--no-tips", "--eval-annotations", path]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)


def test_package_is_python37_syntax():
    result = _vermin(PACKAGE)
    assert result.returncode == 0, result.stdout


def test_vermin_catches_newer_syntax(tmp_path):
    (tmp_path / "new.py").write_text("if (n := 3) > 2:\n    print(f'{n=}')\n")
    assert _vermin(str(tmp_path / "new.py")).returncode != 0


# Public names TF 2.6 takes from another package it depends on, so its generated API modules do not
# list them: tf.summary's writers' ops come from tensorboard 2.6 (tensorboard/summary/_tf/summary).
FROM_DEPENDENCIES = {"tf.summary.scalar", "tf.summary.histogram", "tf.summary.image", "tf.summary.text"}


def _load_api():
    with open(API_LIST) as f:
        lines = [line.strip() for line in f if line.strip()]
    modules = {line[:-1] for line in lines if line.endswith("/")}
    return {line for line in lines if not line.endswith("/")} | modules | FROM_DEPENDENCIES, modules


def _tf_chains(source):
    """Every dotted name rooted at `tf` in the source, e.g. tf.compat.v1.nn.fused_batch_norm."""
    chains = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            parts = []
            cur = node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "tf":
                chains.add(".".join(["tf"] + parts[::-1]))
    return chains


def unknown_names(source, api, modules):
    """Chains whose module path or symbol is not in the API (attributes of a symbol are not checked)."""
    bad = []
    for chain in sorted(_tf_chains(source)):
        parts = chain.split(".")
        for i in range(2, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in api:
                bad.append(chain)
                break
            if name not in modules:
                break  # a function or class: what follows is its attribute
    # drop chains that are prefixes of longer ones already reported
    return [c for c in bad if not any(o != c and o.startswith(c + ".") for o in bad)]


def test_package_uses_only_tf26_api():
    api, modules = _load_api()
    assert len(api) > 10000 and "tf.nn.conv2d" in api
    checked, problems = 0, {}
    for fname in sorted(os.listdir(PACKAGE)):
        if fname.endswith(".py"):
            with open(os.path.join(PACKAGE, fname)) as f:
                source = f.read()
            checked += len(_tf_chains(source))
            bad = unknown_names(source, api, modules)
            if bad:
                problems[fname] = bad
    assert checked > 20  # the walk really found the package's TensorFlow calls
    assert not problems, "not in TensorFlow 2.6.5's API: %s" % problems


@pytest.mark.parametrize("source,expected", [
    ("tf.experimental.dtensor.Mesh", ["tf.experimental.dtensor.Mesh"]),   # added in TF 2.9
    ("tf.nn.conv2d_v99(x)", ["tf.nn.conv2d_v99"]),
    ("tf.compat.v1.nn.fused_batch_norm(x)", []),
    ("tf.VariableSynchronization.ON_READ", []),
])
def test_api_check_can_fail(source, expected):
    api, modules = _load_api()
    assert unknown_names(source, api, modules) == expected
