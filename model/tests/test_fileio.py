"""Atomic writes and what killed ones leave: a failed write names the file and the reason and leaves
the old file and no temporary; a start removes temporaries by our own names only."""
import errno
import os

import pytest

from mbv3 import config, fileio, train
from mbv3.errors import MbV3Error, WriteError


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = str(tmp_path / "config.yaml")
    fileio.write_text(path, u"old\n")

    def enospc(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(WriteError, match="^cannot write %s: No space left on device$" % path):
        fileio.write_text(path, u"new\n")
    monkeypatch.undo()
    assert os.listdir(str(tmp_path)) == ["config.yaml"] and open(path).read() == "old\n"
    assert issubclass(WriteError, MbV3Error)   # the CLI prints it as one line


def test_config_write_on_a_full_file_system(tiny_fs):
    """A real full disk while a run saves its config.yaml: one error naming it, the old file intact."""
    cfg = config.load("smoke")
    path = cfg.save(tiny_fs.path)
    before = open(path, "rb").read()
    tiny_fs.fill()
    with pytest.raises(WriteError, match="^cannot write %s: No space left on device$" % path):
        config.load("smoke", ["train.steps=12345"]).save(tiny_fs.path)
    assert sorted(os.listdir(tiny_fs.path)) == ["config.yaml", "filler"]
    assert open(path, "rb").read() == before


def test_a_start_removes_only_our_own_temporaries(tmp_path):
    ours = [".tmp-model.ckpt-60-1234.index", ".tmp-model.ckpt-60-1234.data-00000-of-00001",
            ".tmp-model.ckpt-60-1234.data-00000-of-00001.tempstate8443426958102744207",
            "checkpoint.tmp-77", "config.yaml.tmp-77", "labels.txt.tmp-1"]
    theirs = ["model.ckpt-60.index", "model.ckpt-60.data-00000-of-00001", "checkpoint", "config.yaml",
              ".tmp-notes", "notes.tmp-77", "config.yaml.tmp-", "config.yaml.tmp-77.bak", ".tmp-model.ckpt-60.index",
              "eval.json.tmp-3"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    os.mkdir(str(tmp_path / "checkpoint.tmp-5"))                  # a folder, even with our name, is not ours
    os.symlink("elsewhere", str(tmp_path / "config.yaml.tmp-6"))  # nor is a link
    assert fileio.remove_temporaries(str(tmp_path), train.is_stale_temporary) == sorted(ours)
    assert sorted(os.listdir(str(tmp_path))) == sorted(theirs + ["checkpoint.tmp-5", "config.yaml.tmp-6"])
