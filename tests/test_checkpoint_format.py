"""The bytes rrcm writes and the whole messages it gives for files it cannot use: the training state's
layout, the sorted and compact safetensors header, the config's JSON, and every load error."""

from __future__ import annotations

import errno
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import rrcm.checkpoint
from rrcm.checkpoint import (CONFIG_KEY, STATE_KEY, load_checkpoint, load_state, load_weights, read_checkpoint_config,
                             save_checkpoint, save_state)
from rrcm.errors import UserError
from tests.test_checkpoint import WEIGHTS_DIGEST_KEY, checkpoint, flip_bit, header, rewrite, tiny_model, with_digest

__all__ = ["checkpoint"]  # the fixture of tests/test_checkpoint.py, used here too

CORRUPT = "the file is corrupt or was edited"
RESTART = "delete it to restart training from scratch"


def tensor_names(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys())


def assert_same(back, original):
    """Equal values of the same types all the way down (a tuple is not a list, a tensor keeps its dtype)."""
    assert type(back) is type(original), (back, original)
    if isinstance(original, torch.Tensor):
        assert back.dtype == original.dtype and torch.equal(back, original)
    elif isinstance(original, dict):
        assert list(back) == list(original)
        for key in original:
            assert_same(back[key], original[key])
    elif isinstance(original, (list, tuple)):
        assert len(back) == len(original)
        for b, o in zip(back, original):
            assert_same(b, o)
    else:
        assert back == original


# -- the training state: a JSON skeleton and tensors named by their path ------------------------------

def test_a_training_state_comes_back_as_it_was_saved_with_each_tensor_named_by_its_path(tmp_path):
    t = [torch.full((2,), float(i)) for i in range(6)]
    # the same key ("w", 0) under different parents, lists in lists, tuples, integer keys, JSON values
    state = {"model": {"w": t[0]}, "ema": {"w": t[1]},
             "optimizer": {"state": {0: {"exp_avg": t[2]}}, "param_groups": [{"params": [0, 1], "lr": 0.1}]},
             "rng": [t[3], (t[4], "mt19937")], "scaler": [[t[5]]], "step": 3, "best": None, "done": False}
    path = tmp_path / "train_state.safetensors"
    save_state(path, state)
    assert_same(load_state(path), state)
    assert tensor_names(path) == {"model.w", "ema.w", "optimizer.state.0.exp_avg", "rng.0", "rng.1.0", "scaler.0.0"}


@pytest.mark.parametrize("state, names", [({"": torch.ones(2)}, {"_"}),
                                          ({"": [torch.ones(1), (torch.zeros(1),)]}, {"0", "1.0"})],
                         ids=["tensor", "list"])
def test_an_empty_key_gives_the_paths_below_it_no_leading_dot(state, names, tmp_path):
    # the root of the path is empty: a tensor there is named "_", a list's items "0", "1", ...
    save_state(tmp_path / "s.safetensors", state)
    assert_same(load_state(tmp_path / "s.safetensors"), state)
    assert tensor_names(tmp_path / "s.safetensors") == names


def test_a_value_a_training_state_cannot_hold_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(TypeError) as err:
        save_state(tmp_path / "s.safetensors", {"step": 1, "sampler": object()})
    assert str(err.value) == "cannot store object in a training state"
    with pytest.raises(TypeError) as err:
        save_state(tmp_path / "s.safetensors", {"z": torch.zeros(2, dtype=torch.complex128)})
    assert str(err.value) == "tensor 'z' has dtype torch.complex128, which rrcm cannot digest"
    assert list(tmp_path.iterdir()) == []


# -- the header: metadata keys sorted, compact JSON padded with spaces ----------------------------------

def assert_sorted_compact_header(path: Path) -> int:
    """The header is the compact, unescaped JSON of itself with sorted metadata, padded with spaces to a
    multiple of 8 bytes (safetensors' alignment); returns the padding."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    raw = data[8 : 8 + length]
    head = json.loads(raw)
    assert list(head["__metadata__"]) == sorted(head["__metadata__"])
    compact = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert raw == compact + b" " * (length - len(compact)) and length % 8 == 0
    return length - len(compact)


def test_every_header_has_its_metadata_sorted_whatever_order_safetensors_wrote(tmp_path):
    # safetensors writes the metadata in the order of a hash map seeded afresh for every file, so each of
    # these saves would put the two keys in either order with probability 1/2 if rrcm did not sort them
    model, cfg = tiny_model()
    for i in range(24):
        save_checkpoint(tmp_path / "m.safetensors", model, {"model": cfg, "sigma": 0.5, "run": i})
        assert_sorted_compact_header(tmp_path / "m.safetensors")


def test_headers_with_any_padding_and_non_ascii_names_are_sorted_and_stay_unescaped(tmp_path):
    # the header lengths of these states cover every padding from 0 to 7 bytes (0: the rewritten JSON
    # fills the header exactly); a tensor's name is the one text of the header that is not escaped JSON
    # already (the skeleton and the config are ASCII), and "é名" is 5 bytes in UTF-8, 12 as \u escapes
    paddings = set()
    for extra in range(8):
        state = {"note": "x" * extra, "é名": torch.ones(2)}
        for _ in range(8):
            save_state(tmp_path / "s.safetensors", state)
            paddings.add(assert_sorted_compact_header(tmp_path / "s.safetensors"))
        assert_same(load_state(tmp_path / "s.safetensors"), state)
    assert paddings == set(range(8))


def test_long_non_ascii_tensor_names_are_written_unescaped_and_sorted(tmp_path):
    state = {"écureuil": {"hérisson": torch.ones(2), "éléphant": torch.zeros(1)}, "blé": [torch.ones(3)]}
    for _ in range(16):
        save_state(tmp_path / "s.safetensors", state)
        assert_sorted_compact_header(tmp_path / "s.safetensors")
    assert tensor_names(tmp_path / "s.safetensors") == {"écureuil.hérisson", "écureuil.éléphant", "blé.0"}
    assert "écureuil.hérisson".encode() in (tmp_path / "s.safetensors").read_bytes()


# -- the config: JSON with sorted keys, anything else as text ------------------------------------------

def test_the_same_config_built_in_another_order_gives_the_same_bytes(tmp_path):
    model, cfg = tiny_model()
    save_checkpoint(tmp_path / "a.safetensors", model, {"model": cfg, "sigma": 0.5, "data": {"name": "digits"}})
    reordered = {"data": {"name": "digits"}, "sigma": 0.5, "model": dict(reversed(list(cfg.items())))}
    save_checkpoint(tmp_path / "b.safetensors", model, reordered)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    recorded = header(tmp_path / "b.safetensors")[1]["__metadata__"][CONFIG_KEY]
    assert recorded == json.dumps(reordered, sort_keys=True)


def test_a_config_value_json_cannot_hold_is_recorded_as_its_text(tmp_path):
    model, cfg = tiny_model()
    save_checkpoint(tmp_path / "m.safetensors", model, {"model": cfg, "sigma": 0.5, "out_dir": tmp_path / "run"})
    assert read_checkpoint_config(tmp_path / "m.safetensors")["out_dir"] == str(tmp_path / "run")


def test_a_config_without_a_model_is_refused_before_anything_is_written(tmp_path):
    model, _ = tiny_model()
    with pytest.raises(ValueError) as err:
        save_checkpoint(tmp_path / "m.safetensors", model, {"sigma": 0.5})
    assert str(err.value) == "checkpoint config needs a 'model' entry (the architecture config)"
    assert list(tmp_path.iterdir()) == []


# -- writing: safetensors' own I/O errors become "cannot write <path>" -----------------------------------

def test_an_io_error_of_safetensors_names_the_path_and_the_reason(tmp_path, monkeypatch):
    # the folder disappears while safetensors writes its temporary file (it writes one of its own beside
    # the target and renames it): a real SafetensorError "I/O error: ... (os error 2) at path ..."
    real_save_file = rrcm.checkpoint.save_file

    def into_a_vanished_folder(tensors, filename, metadata=None):
        real_save_file(tensors, str(Path(filename).parent / "gone" / "f.safetensors"), metadata=metadata)

    monkeypatch.setattr(rrcm.checkpoint, "save_file", into_a_vanished_folder)
    model, cfg = tiny_model()
    target = tmp_path / "m.safetensors"
    with pytest.raises(UserError) as err:
        save_checkpoint(target, model, {"model": cfg})
    assert str(err.value) == (f"cannot write {target}: No such file or directory; "
                              "check the path, its permissions and the free disk space")
    assert isinstance(err.value, OSError) and list(tmp_path.iterdir()) == []


def test_a_full_disk_while_safetensors_writes_says_to_free_space(tmp_path, monkeypatch):
    # safetensors' message for a full disk (its format as in the test above); the errno picks the hint
    from safetensors import SafetensorError

    def full_disk(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              f"(os error {errno.ENOSPC}) at path \"{filename}.x\"")

    monkeypatch.setattr(rrcm.checkpoint, "save_file", full_disk)
    target = tmp_path / "s.safetensors"
    with pytest.raises(UserError) as err:
        save_state(target, {"w": torch.ones(2)})
    assert str(err.value) == f"cannot write {target}: No space left on device; free some disk space or write elsewhere"
    assert list(tmp_path.iterdir()) == []


def test_another_safetensors_error_passes_through_unchanged(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def refuses(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: some new check failed")

    monkeypatch.setattr(rrcm.checkpoint, "save_file", refuses)
    with pytest.raises(SafetensorError, match="^Error while serializing: some new check failed$"):
        save_state(tmp_path / "s.safetensors", {"w": torch.ones(2)})
    assert list(tmp_path.iterdir()) == []


# -- loading a checkpoint: every refusal in full ------------------------------------------------------

def edited_config(source: Path, target: Path, edit) -> Path:
    def metadata(m):
        config = json.loads(m[CONFIG_KEY])
        edit(config)
        return {**m, CONFIG_KEY: json.dumps(config)}

    return rewrite(source, target, metadata=metadata)


VALID_KEYS = "(valid keys: arch, num_classes, in_channels, image_size, mean, std, padding)"


@pytest.mark.parametrize("key_length, shown", [
    (36, "k" * 36 + f" {VALID_KEYS}"),  # 160 characters: shown whole
    (37, "k" * 37 + f" {VALID_KEYS}"[:-4] + "..."),  # 161: cut to 157 and "..."
    (80, "k" * 80 + f" {VALID_KEYS}"[:-47] + "..."),
], ids=["160-chars", "161-chars", "204-chars"])
def test_a_model_rrcm_cannot_build_is_one_line_with_the_reason_cut_to_160_characters(key_length, shown, checkpoint,
                                                                                        tmp_path):
    bad = edited_config(checkpoint, tmp_path / "bad.safetensors", lambda c: c["model"].update({"k" * key_length: 1}))
    reason = f"unknown model config key(s) for arch 'lenet5': {shown}"
    assert len(reason) == min(124 + key_length, 160)
    with pytest.raises(UserError) as err:
        load_checkpoint(bad)
    assert str(err.value) == (f"checkpoint {bad} describes a model rrcm cannot build ({reason}); "
                              "it may come from a newer rrcm version")


@pytest.mark.parametrize("drop, add, differences", [
    (["classifier.1.bias"], [], "missing tensor(s) classifier.1.bias"),
    (["classifier.1.bias", "classifier.1.weight", "features.3.bias"], [],
     "missing tensor(s) classifier.1.bias, classifier.1.weight, features.3.bias"),
    (["classifier.1.bias", "classifier.1.weight", "classifier.3.bias", "features.0.bias"], [],
     "missing tensor(s) classifier.1.bias, classifier.1.weight, classifier.3.bias, ... (4 in all)"),
    ([], ["extra.weight"], "unexpected tensor(s) extra.weight"),
    (["features.0.bias"], ["extra.bias", "extra.weight"],
     "missing tensor(s) features.0.bias; unexpected tensor(s) extra.bias, extra.weight"),
], ids=["one-missing", "three-missing", "four-missing", "one-extra", "missing-and-extra"])
def test_a_checkpoint_whose_tensors_are_not_its_models_names_them(drop, add, differences, checkpoint, tmp_path):
    def edit(state):
        kept = {k: v for k, v in state.items() if k not in drop}
        return {**kept, **{name: torch.zeros(3) for name in add}}

    edited = with_digest(rewrite(checkpoint, tmp_path / "e.safetensors", tensors=edit),
                         tmp_path / "edited.safetensors")
    with pytest.raises(UserError) as err:
        load_checkpoint(edited)
    assert str(err.value) == f"checkpoint {edited} weights do not match its model config ({differences}); {CORRUPT}"


def test_a_tensor_of_the_wrong_shape_is_torchs_reason_on_one_line(checkpoint, tmp_path):
    edited = with_digest(rewrite(checkpoint, tmp_path / "e.safetensors",
                                 tensors=lambda s: {**s, "features.0.bias": torch.zeros(7)}),
                         tmp_path / "edited.safetensors")
    with pytest.raises(UserError) as err:
        load_checkpoint(edited)
    # torch's message has a line break and a tab, and is longer than 160 characters
    reason = ("Error(s) in loading state_dict for LeNet: size mismatch for features.0.bias: copying a param with "
              "shape torch.Size([7]) from checkpoint, the shape in current model is torch.Size([6]).")
    assert str(err.value) == f"checkpoint {edited} weights do not match its model config ({reason[:157]}...); {CORRUPT}"


def test_a_flipped_bit_is_refused_in_full(checkpoint, tmp_path):
    flipped = flip_bit(checkpoint, tmp_path / "flipped.safetensors")
    with pytest.raises(UserError) as err:
        load_weights(flipped)
    assert str(err.value) == (f"checkpoint {flipped} is corrupt: its weights do not match the SHA-256 recorded when it "
                              "was written (a changed bit: a bad disk, copy or edit); copy it again or re-train")


def test_weights_that_cannot_be_read_are_refused_with_the_reason(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"hello")
    with pytest.raises(UserError) as err:
        load_weights(bad)
    assert str(err.value) == (f"cannot read weights from checkpoint {bad}: corrupt or truncated file (Error while "
                              "deserializing header: header too small); re-train or copy it again")


def test_the_model_is_put_on_the_device_asked_for(checkpoint):
    model, _ = load_checkpoint(checkpoint, device="meta")  # a device every torch build has
    assert {p.device.type for p in model.parameters()} == {"meta"} and not model.training
    model, _ = load_checkpoint(checkpoint)
    assert {p.device.type for p in model.parameters()} == {"cpu"}


# -- loading a training state: every refusal in full -----------------------------------------------------

def test_a_checkpoint_given_as_a_training_state_is_refused(checkpoint):
    with pytest.raises(UserError) as err:
        load_state(checkpoint)
    assert str(err.value) == (f"cannot resume from {checkpoint}: corrupt or truncated training state "
                              f"('{STATE_KEY}'); {RESTART}")


def test_a_flipped_bit_in_a_training_state_is_refused_in_full(tmp_path):
    save_state(tmp_path / "s.safetensors", {"w": torch.arange(8.0), "step": 2})
    flipped = flip_bit(tmp_path / "s.safetensors", tmp_path / "flipped.safetensors")
    with pytest.raises(UserError) as err:
        load_state(flipped)
    assert str(err.value) == (f"cannot resume from {flipped}: the training state is corrupt, its tensors do not "
                              f"match the SHA-256 recorded when it was written; {RESTART}")


@pytest.mark.parametrize("drop, add, differences", [
    (["model.bias"], [], "missing tensor(s) model.bias"),
    ([], ["extra"], "unexpected tensor(s) extra"),
    (["model.bias"], ["extra"], "missing tensor(s) model.bias; unexpected tensor(s) extra"),
], ids=["missing", "extra", "both"])
def test_a_training_state_that_does_not_match_its_layout_names_the_tensors(drop, add, differences, tmp_path):
    save_state(tmp_path / "s.safetensors", {"model": torch.nn.Linear(3, 2).state_dict(), "step": 3})

    def edit(state):
        return {**{k: v for k, v in state.items() if k not in drop}, **{name: torch.zeros(1) for name in add}}

    edited = with_digest(rewrite(tmp_path / "s.safetensors", tmp_path / "e.safetensors", tensors=edit),
                         tmp_path / "edited.safetensors")
    with pytest.raises(UserError) as err:
        load_state(edited)
    assert str(err.value) == (f"cannot resume from {edited}: the training state does not match its own layout "
                              f"({differences}); {RESTART}")


def test_a_training_state_skeleton_of_the_wrong_shape_is_refused(tmp_path):
    save_state(tmp_path / "s.safetensors", {"step": 3})
    edited = rewrite(tmp_path / "s.safetensors", tmp_path / "edited.safetensors",
                     metadata=lambda m: {**m, STATE_KEY: json.dumps({"__dict__": 5})})
    with pytest.raises(UserError) as err:
        load_state(edited)
    assert str(err.value) == (f"cannot resume from {edited}: corrupt training state layout "
                              f"('int' object is not iterable); {RESTART}")
    assert header(edited)[1]["__metadata__"][WEIGHTS_DIGEST_KEY]  # the digest (of no tensors) still matched
