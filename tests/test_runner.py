"""The dataset runner: logs, resume after interruption, seed invariance, sharding under torchrun."""

import json
from pathlib import Path

import pytest
import torch

from rrcm.certlog import read_log
from rrcm.checkpoint import load_checkpoint
from rrcm.data import load_dataset
from rrcm.distributed import DistContext
from rrcm.errors import UserError
from rrcm.smoothing.runner import CertifySettings, certify_dataset, part_paths, select_indices
from tests.helpers.torchrun import torchrun

CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
SETTINGS = CertifySettings(sigma=0.5, n0=20, n=300, alpha=0.001, batch_size=128, seed=5, skip=25)


def log_rows(path: Path) -> list[list[str]]:
    """Rows without the wall-clock `time` column, which legitimately differs between runs."""
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    keep = [i for i, name in enumerate(header) if name != "time"]
    return [[fields[i] for i in keep] for fields in (line.split("\t") for line in lines)]


class Interrupting(torch.utils.data.Dataset):
    """Raises KeyboardInterrupt on the k-th example fetched, like a user pressing Ctrl-C."""

    def __init__(self, dataset, k):
        self.dataset, self.k, self.calls, self.info = dataset, k, 0, dataset.info

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.calls += 1
        if self.calls == self.k:
            raise KeyboardInterrupt
        return self.dataset[i]


@pytest.fixture(scope="module")
def model_and_data(tiny_checkpoint):
    model, _ = load_checkpoint(tiny_checkpoint)
    return model, load_dataset("digits", "test")


@pytest.fixture(scope="module")
def reference_log(model_and_data, tmp_path_factory, tiny_checkpoint):
    model, data = model_and_data
    path = tmp_path_factory.mktemp("ref") / "log.tsv"
    return certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)


def test_log_has_cohen_columns_first_and_one_row_per_selected_example(reference_log):
    log = read_log(reference_log)
    header = reference_log.read_text().splitlines()[0].split("\t")
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert {"nA", "n0", "n", "sigma", "alpha", "seed", "pA_lower", "cA"} <= set(header)
    assert list(log.idx) == select_indices(500, 25, -1) == list(range(0, 500, 25))
    config = json.loads(Path(str(reference_log) + ".json").read_text())
    assert config["complete"] is True and config["subset"]["count"] == 20
    assert config["settings"]["n"] == 300 and config["checkpoint_sha256"]
    assert not part_paths(reference_log)


def test_cohen_subset_rule():
    assert select_indices(10, 3, -1) == [0, 3, 6, 9]
    assert select_indices(10, 3, 7) == [0, 3, 6]  # --max is an index bound, as in Cohen's code


def test_resume_after_interruption_gives_the_same_log(model_and_data, reference_log, tmp_path, tiny_checkpoint):
    model, data = model_and_data
    path = tmp_path / "log.tsv"
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(model, Interrupting(data, 6), SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint,
                        progress=False)
    assert not path.exists()
    (part,) = part_paths(path)
    # the runner's preflight fetches the first example once, then 4 are certified before the 6th fetch
    assert len(part.read_text().splitlines()) == 1 + 4
    with open(part, "a") as f:  # a row torn by the interruption
        f.write("125\t3\t3\t0.4")
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)
    assert log_rows(path) == log_rows(reference_log)
    # running again is a no-op
    before = path.read_text()
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)
    assert path.read_text() == before


class Float64Linear(torch.nn.Module):
    """A linear classifier computed in float64: how examples are batched cannot flip an argmax (float32
    kernels may sum in another order for another batch size)."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(64, 10).double()

    def forward(self, x):
        return self.linear(x.flatten(1).double())


def test_log_does_not_depend_on_batch_size(tmp_path):
    torch.manual_seed(0)
    model = Float64Linear().eval()
    data = load_dataset("digits", "test")
    logs = []
    for batch_size in (300, 64, 7):
        settings = CertifySettings(**{**SETTINGS.__dict__, "batch_size": batch_size})
        logs.append(log_rows(certify_dataset(model, data, settings, tmp_path / f"b{batch_size}.tsv", ctx=CPU,
                                             progress=False)))
    assert logs[0] == logs[1] == logs[2]


# Every setting that changes a number in the log, with another value for it.
CHANGED_SETTINGS = [("sigma", 0.25), ("n0", 30), ("n", 400), ("alpha", 0.01), ("seed", 6), ("skip", 50),
                    ("max_index", 300), ("precision", "bf16"), ("procedure", "sequential")]
# a sequential run needs its goal (tests/test_sequential.py refuses every sequential setting on its own)
NEEDED_WITH = {"procedure": {"target_radius": 0.5}}


def test_every_result_setting_is_checked_on_resume():
    from rrcm.smoothing.runner import RESULT_KEYS

    assert {key for key, _ in CHANGED_SETTINGS} == set(RESULT_KEYS)


@pytest.mark.parametrize("key,value", CHANGED_SETTINGS, ids=[key for key, _ in CHANGED_SETTINGS])
@pytest.mark.parametrize("interrupted", [True, False], ids=["after-interruption", "after-completion"])
def test_resume_with_other_settings_is_refused(key, value, interrupted, model_and_data, reference_log, tmp_path,
                                               tiny_checkpoint):
    model, data = model_and_data
    path = tmp_path / "log.tsv"
    if interrupted:
        with pytest.raises(KeyboardInterrupt):
            certify_dataset(model, Interrupting(data, 3), SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint,
                            progress=False)
    else:
        for suffix in ("", ".json"):
            Path(f"{path}{suffix}").write_bytes(Path(f"{reference_log}{suffix}").read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = CertifySettings(**{**SETTINGS.__dict__, key: value, **NEEDED_WITH.get(key, {})})
    with pytest.raises(UserError, match=f"different {key}"):
        certify_dataset(model, data, other, path, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_with_another_checkpoint_or_data_is_refused(model_and_data, reference_log, tmp_path,
                                                           tiny_checkpoint):
    model, data = model_and_data
    path = tmp_path / "log.tsv"
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(model, Interrupting(data, 3), SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint,
                        progress=False)
    other_checkpoint = tmp_path / "other.safetensors"
    other_checkpoint.write_bytes(tiny_checkpoint.read_bytes() + b"")  # same bytes: accepted
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=other_checkpoint, progress=False)
    assert log_rows(path) == log_rows(reference_log)
    # now a different checkpoint (other bytes) and other data against the finished log
    changed = tmp_path / "changed.safetensors"
    blob = bytearray(tiny_checkpoint.read_bytes())
    blob[-1] ^= 1
    changed.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="different checkpoint"):
        certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=changed, progress=False)
    train = load_dataset("digits", "train")
    with pytest.raises(UserError, match="different data"):
        certify_dataset(model, train, SETTINGS, path, ctx=CPU, checkpoint_path=other_checkpoint,
                        data_source={"split": "train"}, progress=False)


def test_log_agrees_with_an_independent_recomputation_from_its_own_columns(reference_log):
    """Each row's decision, recomputed from nA, n, alpha and sigma alone (scipy, not rrcm's stats)."""
    from scipy.optimize import brentq
    from scipy.stats import binom, norm

    data = load_dataset("digits", "test")
    lines = reference_log.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert [int(r["idx"]) for r in rows] == select_indices(len(data), SETTINGS.skip, SETTINGS.max_index)
    decisions = set()
    for row in rows:
        idx, n_a, n = int(row["idx"]), int(row["nA"]), int(row["n"])
        alpha, sigma = float(row["alpha"]), float(row["sigma"])
        assert (n, int(row["n0"]), alpha, sigma, int(row["seed"])) == (SETTINGS.n, SETTINGS.n0, SETTINGS.alpha,
                                                                        SETTINGS.sigma, SETTINGS.seed)
        assert int(row["label"]) == data[idx][1]
        if n_a == 0:
            lower = 0.0
        elif n_a == n:
            lower = alpha ** (1 / n)
        else:
            lower = brentq(lambda p: binom.sf(n_a - 1, n, p) - alpha, 1e-15, 1 - 1e-15, xtol=1e-15, rtol=1e-15)
        assert float(row["pA_lower"]) == pytest.approx(lower, rel=1e-9, abs=1e-15)
        predict, radius = int(row["predict"]), float(row["radius"])
        if lower < 0.5:
            assert (predict, radius) == (-1, 0.0)
            decisions.add("abstain")
        else:
            assert predict == int(row["cA"])
            assert radius == pytest.approx(sigma * norm.ppf(lower), rel=1e-9)
            decisions.add("certify")
        assert int(row["correct"]) == int(predict == int(row["label"]))
    assert decisions == {"abstain", "certify"}  # the log exercises both branches


@pytest.mark.slow
def test_torchrun_two_processes_shard_and_merge(reference_log, tiny_checkpoint, tmp_path, cli_env):
    out = tmp_path / "dist.tsv"
    args = ["certify", "--checkpoint", str(tiny_checkpoint), "--precision", "fp32", "--N0", "20", "--N", "300",
            "--batch-size", "128",
            "--seed", "5", "--skip", "25", "--sigma", "0.5", "--device", "cpu", "--out", str(out), "--quiet"]
    torchrun(["-m", "rrcm", *args], tmp_path / "logs", env=cli_env)  # fails with every rank's output
    assert log_rows(out) == log_rows(reference_log)
    assert json.loads(Path(str(out) + ".json").read_text())["world_size"] == 2
    assert not part_paths(out)


@pytest.mark.slow
def test_interrupted_single_process_run_resumes_under_torchrun(model_and_data, reference_log, tiny_checkpoint,
                                                               tmp_path, cli_env):
    model, data = model_and_data
    out = tmp_path / "mixed.tsv"
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(model, Interrupting(data, 8), SETTINGS, out, ctx=CPU, checkpoint_path=tiny_checkpoint,
                        data_source={"name": "digits", "split": "test", "root": None}, progress=False)
    args = ["certify", "--checkpoint", str(tiny_checkpoint), "--precision", "fp32", "--N0", "20", "--N", "300",
            "--batch-size", "128",
            "--seed", "5", "--skip", "25", "--sigma", "0.5", "--device", "cpu", "--out", str(out), "--quiet"]
    torchrun(["-m", "rrcm", *args], tmp_path / "logs", env=cli_env)  # fails with every rank's output
    assert log_rows(out) == log_rows(reference_log)


def test_a_failed_write_of_the_log_names_the_file(model_and_data, tmp_path, tiny_checkpoint, monkeypatch):
    """A full disk while rows are written: one line naming the part file, not a bare OSError."""
    import errno
    import os as os_module

    model, data = model_and_data
    path = tmp_path / "log.tsv"

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os_module, "fsync", full_disk)
    with pytest.raises(UserError, match=r"cannot write .*log\.tsv\.part-rank0: No space left on device"):
        certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)


def test_a_failed_write_of_a_row_names_the_file(model_and_data, tmp_path, tiny_checkpoint, monkeypatch):
    """The disk fills after the header: the row's write names the part file too."""
    import errno
    import os as os_module

    model, data = model_and_data
    path = tmp_path / "log.tsv"
    calls, real_fsync = [], os_module.fsync

    def full_after_the_header(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os_module, "fsync", full_after_the_header)
    with pytest.raises(UserError, match=r"cannot write .*log\.tsv\.part-rank0: No space left on device"):
        certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)
    assert len(calls) == 2  # the header was written; the first row was not
