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


def test_log_does_not_depend_on_batch_size(tmp_path):
    # A linear model: its per-example outputs do not depend on how examples are batched.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    data = load_dataset("digits", "test")
    logs = []
    for batch_size in (300, 64, 7):
        settings = CertifySettings(**{**SETTINGS.__dict__, "batch_size": batch_size})
        logs.append(log_rows(certify_dataset(model, data, settings, tmp_path / f"b{batch_size}.tsv", ctx=CPU,
                                             progress=False)))
    assert logs[0] == logs[1] == logs[2]


def test_resume_with_other_settings_is_refused(model_and_data, tmp_path, tiny_checkpoint):
    model, data = model_and_data
    path = tmp_path / "log.tsv"
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(model, Interrupting(data, 3), SETTINGS, path, ctx=CPU, checkpoint_path=tiny_checkpoint,
                        progress=False)
    other = CertifySettings(**{**SETTINGS.__dict__, "n": 400})
    with pytest.raises(UserError, match="different n"):
        certify_dataset(model, data, other, path, ctx=CPU, checkpoint_path=tiny_checkpoint, progress=False)


@pytest.mark.slow
def test_torchrun_two_processes_shard_and_merge(reference_log, tiny_checkpoint, tmp_path, cli_env):
    out = tmp_path / "dist.tsv"
    args = ["certify", "--checkpoint", str(tiny_checkpoint), "--N0", "20", "--N", "300", "--batch-size", "128",
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
    args = ["certify", "--checkpoint", str(tiny_checkpoint), "--N0", "20", "--N", "300", "--batch-size", "128",
            "--seed", "5", "--skip", "25", "--sigma", "0.5", "--device", "cpu", "--out", str(out), "--quiet"]
    torchrun(["-m", "rrcm", *args], tmp_path / "logs", env=cli_env)  # fails with every rank's output
    assert log_rows(out) == log_rows(reference_log)
