"""Regenerate mbv3/resources/imagenet_classes.tsv from the timm wheel's data files.

The table is committed so nothing is fetched at run time; this script records where it came
from. Usage: pip download --no-deps -d /tmp/timm timm && python tools/make_imagenet_classes.py /tmp/timm/timm-*.whl
"""
import io
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "mbv3" / "resources" / "imagenet_classes.tsv"


def main(wheel):
    with zipfile.ZipFile(wheel) as zf:
        synsets = zf.read("timm/data/_info/imagenet_synsets.txt").decode().split()
        lemmas = {}
        for line in io.StringIO(zf.read("timm/data/_info/imagenet_synset_to_lemma.txt").decode()):
            wnid, _, lemma = line.rstrip("\n").partition("\t")
            lemmas[wnid] = lemma
    if len(synsets) != 1000 or synsets != sorted(synsets):
        raise SystemExit("expected the 1000 ImageNet-1k synsets in sorted order")
    OUT.write_text("".join("%s\t%s\n" % (w, lemmas[w]) for w in synsets))
    print("wrote %s (%d classes)" % (OUT, len(synsets)))


if __name__ == "__main__":
    main(sys.argv[1])
