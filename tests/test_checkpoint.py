"""What rrcm writes: checkpoint integrity (SHA-256 of the weights), strict loading, the config's types,
file permissions, failed runs that leave nothing behind, and OS errors that say what failed where."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rrcm.checkpoint import CONFIG_KEY, load_checkpoint, load_state, read_checkpoint_config, save_checkpoint, save_state
from rrcm.cli import main
from rrcm.errors import UserError
from rrcm.fileio import write_json_atomic, write_text_atomic
from rrcm.models import build_model, model_config

WEIGHTS_DIGEST_KEY = "rrcm_weights_sha256"  # the metadata key documented in rrcm.checkpoint


def tiny_model():
    cfg = model_config("lenet5", num_classes=10, in_channels=1, image_size=8, mean=[0.3], std=[0.4])
    return build_model(cfg).eval(), cfg


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model, cfg = tiny_model()
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model, {"model": cfg, "sigma": 0.5, "kind": "classifier"})
    return path


def header(path: Path) -> tuple[int, dict]:
    """(header length, header) of a safetensors file: 8 bytes little-endian length, then JSON."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return length, json.loads(data[8 : 8 + length])


def flip_bit(source: Path, target: Path, offset_in_data: int = 5) -> Path:
    """Copy `source` with one bit flipped inside the tensor data (after the header)."""
    data = bytearray(source.read_bytes())
    length, _ = header(source)
    data[8 + length + offset_in_data] ^= 0x10
    target.write_bytes(bytes(data))
    return target


def digest_from_file(path: Path) -> str:
    """The documented digest, computed independently from the file's own bytes and header."""
    data = path.read_bytes()
    length, head = header(path)
    start = 8 + length
    entries = {k: v for k, v in head.items() if k != "__metadata__"}

    def field(raw: bytes) -> bytes:
        return struct.pack("<Q", len(raw)) + raw

    h = hashlib.sha256(struct.pack("<Q", len(entries)))
    for name in sorted(entries):
        entry = entries[name]
        begin, end = entry["data_offsets"]
        h.update(field(name.encode("utf-8")))
        h.update(field(entry["dtype"].encode("ascii")))
        h.update(struct.pack("<Q", len(entry["shape"])) + b"".join(struct.pack("<Q", d) for d in entry["shape"]))
        h.update(field(data[start + begin : start + end]))
    return h.hexdigest()


def rewrite(source: Path, target: Path, *, tensors=None, metadata=None) -> Path:
    """Copy a safetensors file with its tensors and/or metadata edited (no rrcm validation on the way)."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        old_metadata = dict(f.metadata() or {})
    state = load_file(str(source))
    save_file(tensors(state) if tensors else state, str(target),
              metadata=metadata(old_metadata) if metadata else old_metadata)
    return target


def with_digest(source: Path, target: Path) -> Path:
    """Copy `source` with the digest of its own tensors recorded, as rrcm records it."""
    return rewrite(source, target, metadata=lambda m: {**m, WEIGHTS_DIGEST_KEY: digest_from_file(source)})


# -- permissions: 0o666 & ~umask for every file rrcm writes -----------------------------------------

@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_every_written_file_gets_the_umask_permissions(umask, tmp_path):
    model, cfg = tiny_model()
    save_checkpoint(tmp_path / "m.safetensors", model, {"model": cfg, "sigma": 0.5})
    save_state(tmp_path / "s.safetensors", {"w": torch.zeros(2), "step": 0})
    write_json_atomic(tmp_path / "c.json", {"a": 1})
    write_text_atomic(tmp_path / "t.txt", "x\n")
    assert main(["certify", "--checkpoint", str(tmp_path / "m.safetensors"), "--data", "digits", "--n0", "10",
                 "--n", "100", "--skip", "300", "--out", str(tmp_path / "log.tsv"), "--quiet"]) == 0
    expected = 0o666 & ~umask
    for name in ("m.safetensors", "s.safetensors", "c.json", "t.txt", "log.tsv", "log.tsv.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == expected, (name, oct((tmp_path / name).stat().st_mode))


def test_a_training_run_writes_files_with_the_umask_permissions(umask, tmp_path):
    from rrcm.train.config import TrainConfig
    from rrcm.train.loop import train_classifier

    cfg = TrainConfig(data="digits", arch="lenet5", sigma=0.25, epochs=1, batch_size=256, lr=0.05, device="cpu")
    train_classifier(cfg, tmp_path / "run", progress=False)
    files = sorted(p for p in (tmp_path / "run").iterdir() if p.is_file())
    assert {p.name for p in files} >= {"config.json", "metrics.csv", "model.safetensors"}
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


# -- OS errors: say what failed, on which path ------------------------------------------------------

def test_a_write_that_fails_names_the_operation_and_the_final_path(tmp_path, monkeypatch):
    target = tmp_path / "c.json"

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk does: no file name

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(UserError, match=rf"cannot write {target}: No space left on device") as info:
        write_json_atomic(target, {"a": 1})
    assert isinstance(info.value, OSError)  # callers that only warn on an unwritable file still catch it
    assert list(tmp_path.iterdir()) == []


def test_a_temporary_file_name_never_reaches_the_user(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), f"{dir}/.c.json.abc123.tmp")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(UserError, match=rf"cannot write {tmp_path / 'c.json'}: Permission denied") as info:
        write_json_atomic(tmp_path / "c.json", {"a": 1})
    assert ".tmp" not in str(info.value)


def test_a_checkpoint_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    model, cfg = tiny_model()
    with pytest.raises(UserError, match=r"cannot create folder .*afile") as info:
        save_checkpoint(tmp_path / "afile" / "m.safetensors", model, {"model": cfg})
    assert ".tmp" not in str(info.value)


def test_the_cli_names_the_failure_of_an_os_error_without_a_file_name(monkeypatch, capsys):
    import argparse

    import rrcm.cli

    def no_space(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command="report", run=no_space)

    monkeypatch.setattr(rrcm.cli, "build_parser", Parser)
    code = main(["report", "x.tsv"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("rrcm: error: "), err
    assert "no file name" not in err and "No space left on device" in err, err
