"""List the public `tf.*` API of a TensorFlow wheel, one dotted name per line (modules end in '/').

The package must run under CANN's TensorFlow 2.6.5 adapter, which no machine here can install
(no Python 3.7-3.9 wheel for this interpreter). Its API, though, is written down in the wheel's
generated `_api/v2` modules; tests/test_compat.py checks every `tf.` name the package uses against
the committed list this script produced:

    pip download --no-deps --only-binary=:all: --python-version 3.9 \
        --platform manylinux2010_x86_64 -d /tmp/tf26 tensorflow-cpu==2.6.5
    python tools/tf_api_list.py /tmp/tf26/tensorflow_cpu-2.6.5-*.whl > tests/data/tf-2.6.5-api.txt
"""
import ast
import sys
import zipfile

ROOTS = {"tensorflow/__init__.py": "tf"}
API = "tensorflow/_api/v2/"


def module_name(path):
    if path in ROOTS:
        return ROOTS[path]
    if path.startswith(API) and path.endswith("/__init__.py"):
        inner = path[len(API):-len("/__init__.py")]
        return "tf." + inner.replace("/", ".") if inner else None
    return None


def main(wheel):
    names = set()
    with zipfile.ZipFile(wheel) as zf:
        for path in zf.namelist():
            module = module_name(path)
            if not module:
                continue
            names.add(module + "/")
            for node in ast.parse(zf.read(path)).body:
                if isinstance(node, ast.ImportFrom):
                    for alias in node.names:
                        public = alias.asname or alias.name
                        if not public.startswith("_") or (public.startswith("__") and public.endswith("__")):
                            names.add(module + "." + public)
    for name in sorted(names):
        print(name)


if __name__ == "__main__":
    main(sys.argv[1])
