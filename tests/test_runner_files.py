"""The runner's part files: what a resume keeps, empty and torn files, and the merge's refusals."""

from pathlib import Path

import pytest
import torch

from rrcm.data import load_dataset
from rrcm.errors import UserError
from rrcm.smoothing.runner import CertifySettings, certify_dataset, part_paths, select_indices
from tests.test_runner import CPU, Float64Linear, Interrupting, log_rows

# ten examples (0, 50, ..., 450) of a float64 linear model: fast, and the same numbers however batched
SETTINGS = CertifySettings(sigma=0.5, n0=20, n=300, alpha=0.001, batch_size=128, seed=5, skip=50)
INDICES = select_indices(500, 50, -1)
# a `time` no real run writes: a row that still has it was kept from before the resume, not recomputed
MARKER_TIME = "7 days, 7:07:07.000007"


class Deleting(torch.utils.data.Dataset):
    """Deletes `path` when example `when` is fetched, like a user removing a file while the run goes on."""

    def __init__(self, dataset, when, path):
        self.dataset, self.when, self.path, self.info = dataset, when, path, dataset.info

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i == self.when and self.path.exists():
            self.path.unlink()
        return self.dataset[i]


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    return Float64Linear().eval(), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def reference_log(model_and_data, tmp_path_factory):
    model, data = model_and_data
    return certify_dataset(model, data, SETTINGS, tmp_path_factory.mktemp("ref") / "log.tsv", ctx=CPU,
                           progress=False)


def interrupted_part(model_and_data, path, fetches):
    """Interrupt a run at its `fetches`-th fetch of an example; mark the time of every row its part file
    kept and return the part file's lines."""
    model, data = model_and_data
    with pytest.raises(KeyboardInterrupt):
        certify_dataset(model, Interrupting(data, fetches), SETTINGS, path, ctx=CPU, progress=False)
    (part,) = part_paths(path)
    header, *rows = part.read_text().splitlines(keepends=True)
    time_column = header.split("\t").index("time")
    marked = []
    for row in rows:
        fields = row.split("\t")
        fields[time_column] = MARKER_TIME
        marked.append("\t".join(fields))
    part.write_text(header + "".join(marked))
    return part, header, marked


def kept_indices(path):
    """Indices whose row in the finished log still carries MARKER_TIME."""
    header, *lines = Path(path).read_text().splitlines()
    column = header.split("\t").index("time")
    return [int(fields[0]) for fields in (line.split("\t") for line in lines) if fields[column] == MARKER_TIME]


def test_a_resume_after_a_torn_row_keeps_every_complete_row(model_and_data, reference_log, tmp_path):
    path = tmp_path / "log.tsv"
    # the preflight fetches the first example, then 4 are certified before the 6th fetch interrupts
    part, header, rows = interrupted_part(model_and_data, path, 6)
    assert len(rows) == 4
    with open(part, "a") as f:
        f.write("200\t3\t3\t0.4")  # the row in flight when the process died, torn mid-write
    model, data = model_and_data
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert log_rows(path) == log_rows(reference_log)
    assert kept_indices(path) == INDICES[:4]  # certified once, before the interruption, and kept
    assert not part_paths(path)


def test_an_empty_part_file_of_an_interrupted_process_is_skipped(model_and_data, reference_log, tmp_path):
    # A two-process run stopped: rank 1 had written 4 rows, rank 0 had only created its file (no header yet).
    path = tmp_path / "log.tsv"
    part, _, _ = interrupted_part(model_and_data, path, 6)
    part.rename(f"{path}.part-rank1")
    Path(f"{path}.part-rank0").write_bytes(b"")
    model, data = model_and_data
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert log_rows(path) == log_rows(reference_log)
    assert kept_indices(path) == INDICES[:4]
    assert not part_paths(path)


def test_an_index_certified_twice_is_refused_and_nothing_is_merged(model_and_data, tmp_path):
    # Two runs started on the same --out at once both certified the first examples.
    path = tmp_path / "log.tsv"
    part, _, _ = interrupted_part(model_and_data, path, 4)
    Path(f"{path}.part-rank1").write_bytes(part.read_bytes())
    model, data = model_and_data
    with pytest.raises(UserError) as error:
        certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert str(error.value) == (f"index 0 was certified twice in {path}'s part files; delete them to start over")
    assert not path.exists()
    assert len(part_paths(path)) == 2


def test_rows_lost_before_the_merge_are_named_and_a_rerun_finishes_them(model_and_data, reference_log, tmp_path):
    # Rank 1 of an earlier run certified 0, 50 and 100; its part file disappears while the last example runs.
    path = tmp_path / "log.tsv"
    part, _, _ = interrupted_part(model_and_data, path, 5)
    other = Path(f"{path}.part-rank1")
    part.rename(other)
    model, data = model_and_data
    with pytest.raises(UserError) as error:
        certify_dataset(model, Deleting(data, INDICES[-1], other), SETTINGS, path, ctx=CPU, progress=False)
    assert str(error.value) == (f"3 examples are missing from {path}'s part files (first: 0); "
                                "re-run the same command to finish them")
    assert not path.exists()
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert log_rows(path) == log_rows(reference_log)
    assert kept_indices(path) == []  # the lost rows were certified again
