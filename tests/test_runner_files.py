"""The dataset runner through its files and output: what a resume keeps of the part files, the run's json, every
refusal in full, the progress bar, and how the settings reach the smoothed classifier."""

import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from scipy.stats import norm

import rrcm
from rrcm.certlog import header_line, read_log
from rrcm.data import load_dataset
from rrcm.errors import UserError
from rrcm.smoothing import Smooth
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


# -- what the run records ---------------------------------------------------------------------------


class Empty(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.info = dataset.info

    def __len__(self):
        return 0

    def __getitem__(self, i):
        raise IndexError(i)


def test_the_run_s_json_records_what_it_did(model_and_data, tmp_path):
    model, data = model_and_data
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"weights" * 1000)
    path = tmp_path / "log.tsv"
    before = datetime.datetime.now(datetime.timezone.utc)
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, checkpoint_path=checkpoint,
                    data_source={"split": "test"}, progress=False)
    after = datetime.datetime.now(datetime.timezone.utc)
    config = json.loads(Path(f"{path}.json").read_text())
    finished = datetime.datetime.fromisoformat(config.pop("finished_at"))
    assert finished.utcoffset() == datetime.timedelta(0) and before <= finished <= after
    choice = config.pop("precision_choice")
    assert (choice["requested"], choice["precision"]) == ("fp32", "fp32")
    assert config == {
        "command": "certify",
        "rrcm_version": rrcm.__version__,
        "torch_version": torch.__version__,
        "settings": dataclasses.asdict(SETTINGS),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": hashlib.sha256(b"weights" * 1000).hexdigest(),
        "data": {**data.info.to_dict(), "split": "test"},
        "subset": {"rule": "every skip-th index below max_index (Cohen et al.)", "count": 10,
                   "first": [0, 50, 100, 150, 200], "last": 450},
        "procedure": {"procedure": "cohen", "n0": SETTINGS.n0, "n": SETTINGS.n, "alpha": SETTINGS.alpha},
        # all 300 samples agree: p̲ = alpha^(1/n)
        "max_radius": pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 300)), rel=1e-12),
        "device": "cpu",
        "world_size": 1,
        "log": str(path),
        "complete": True,
    }


def test_a_run_without_checkpoint_or_examples_records_none(model_and_data, tmp_path):
    model, data = model_and_data
    path = tmp_path / "log.tsv"
    certify_dataset(model, Empty(data), SETTINGS, path, ctx=CPU, progress=False)
    config = json.loads(Path(f"{path}.json").read_text())
    assert (config["checkpoint"], config["checkpoint_sha256"]) == (None, None)
    assert config["subset"] == {"rule": "every skip-th index below max_index (Cohen et al.)", "count": 0,
                                "first": [], "last": None}
    assert config["complete"] is True
    assert path.read_text().splitlines() == [header_line().rstrip("\n")]


def test_every_row_is_the_smoothed_classifier_s_certificate_with_the_run_s_seed(model_and_data, reference_log):
    model, data = model_and_data
    smooth = Smooth(model, 10, SETTINGS.sigma, seed=SETTINGS.seed)
    lines = reference_log.read_text().splitlines()
    header = lines[0].split("\t")
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        i = int(row["idx"])
        cert = smooth.certify_with_details(data[i][0], SETTINGS.n0, SETTINGS.n, SETTINGS.alpha, 64, idx=i)
        assert (int(row["predict"]), float(row["radius"]), int(row["cA"]), int(row["nA"]), float(row["pA_lower"])) \
            == (cert.prediction, cert.radius, cert.selected, cert.count_selected, cert.p_lower)


def test_one_example_one_sample_per_batch(model_and_data, tmp_path):
    # the smallest run: --max-index 1 selects only example 0, batch size 1, n0 = 1, n = 10
    model, data = model_and_data
    settings = CertifySettings(sigma=0.5, n0=1, n=10, alpha=0.001, batch_size=1, seed=5, max_index=1)
    path = certify_dataset(model, data, settings, tmp_path / "log.tsv", ctx=CPU, progress=False)
    header, line = path.read_text().splitlines()
    row = dict(zip(header.split("\t"), line.split("\t")))
    cert = Smooth(model, 10, 0.5, seed=5).certify_with_details(data[0][0], 1, 10, 0.001, 7, idx=0)
    assert (int(row["idx"]), int(row["cA"]), int(row["nA"]), float(row["pA_lower"])) == \
        (0, cert.selected, cert.count_selected, cert.p_lower)


def test_the_log_s_folders_are_created(model_and_data, reference_log, tmp_path):
    model, data = model_and_data
    path = tmp_path / "new" / "deeper" / "log.tsv"
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert log_rows(path) == log_rows(reference_log)


# -- settings and output paths that are refused -----------------------------------------------------


@pytest.mark.parametrize("changes,message", [
    (dict(batch_size=0), "batch size must be at least 1, got 0"),
    (dict(skip=0), "--skip must be at least 1, got 0"),
    (dict(max_index=0), "--max-index must be a positive index bound or -1 (no bound), got 0"),
    (dict(max_index=-2), "--max-index must be a positive index bound or -1 (no bound), got -2"),
])
def test_invalid_run_settings_name_the_problem(changes, message, model_and_data, tmp_path):
    model, data = model_and_data
    with pytest.raises(UserError) as error:
        certify_dataset(model, data, dataclasses.replace(SETTINGS, **changes), tmp_path / "log.tsv", ctx=CPU,
                        progress=False)
    assert str(error.value) == message
    assert list(tmp_path.iterdir()) == []


def test_the_subset_stops_below_max_index():
    assert select_indices(10, 1, 0) == []
    assert select_indices(10, 3, 1) == [0]
    assert select_indices(10, 3, 4) == [0, 3]
    assert select_indices(2, 3, -1) == [0]


def copy_run(reference_log, path, edit_json=None, edit_log=None):
    """Copy a finished run's log and json to `path`, optionally editing them."""
    config = json.loads(Path(f"{reference_log}.json").read_text())
    text = reference_log.read_text()
    Path(f"{path}.json").write_text(json.dumps(edit_json(config) if edit_json else config))
    path.write_text(edit_log(text) if edit_log else text)


def refusal(model_and_data, path):
    model, data = model_and_data
    files = {p: p.read_bytes() for p in path.parent.iterdir() if p.is_file()}
    with pytest.raises(UserError) as error:
        certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert {p: p.read_bytes() for p in path.parent.iterdir() if p.is_file()} == files  # left untouched
    return str(error.value)


def test_a_folder_where_the_settings_go_is_refused(model_and_data, tmp_path):
    path = tmp_path / "log.tsv"
    Path(f"{path}.json").mkdir()
    assert refusal(model_and_data, path) == (f"{path}.json is a folder, but rrcm keeps the log's settings there; "
                                             "remove it or choose another --out")


def test_a_log_without_its_settings_is_refused(model_and_data, tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("something else\n")
    assert refusal(model_and_data, path) == (f"{path} already exists but has no log.tsv.json beside it, so it is not "
                                             "a certification log of this run; remove it or choose another --out")


def test_a_log_its_settings_do_not_mark_complete_is_refused(model_and_data, reference_log, tmp_path):
    path = tmp_path / "log.tsv"
    copy_run(reference_log, path, edit_json=lambda c: {**c, "complete": False})
    assert refusal(model_and_data, path) == (f"{path} exists but log.tsv.json does not mark it complete; remove both "
                                             "and re-run to certify again, or choose another --out")


def test_an_unreadable_finished_log_is_refused(model_and_data, reference_log, tmp_path):
    path = tmp_path / "log.tsv"
    copy_run(reference_log, path, edit_log=lambda text: text.replace("\t", " ", 3))
    with pytest.raises(UserError) as inner:
        read_log(path)
    assert refusal(model_and_data, path) == (f"{path} exists but cannot be read back ({inner.value}); remove it or "
                                             "choose another --out")


def test_a_finished_log_with_other_rows_is_refused(model_and_data, reference_log, tmp_path):
    path = tmp_path / "log.tsv"
    copy_run(reference_log, path, edit_log=lambda text: "".join(text.splitlines(keepends=True)[:-1]))
    assert refusal(model_and_data, path) == (f"{path} holds 9 rows but this run selects 10 examples; remove it or "
                                             "choose another --out")


def test_unreadable_settings_of_an_earlier_run_are_refused(model_and_data, tmp_path):
    path = tmp_path / "log.tsv"
    interrupted_part(model_and_data, path, 4)
    Path(f"{path}.json").write_text('{"settings": ')  # cut short
    assert refusal(model_and_data, path) == (f"cannot read {path}.json; delete it and the log's part files to start "
                                             "over")


def test_settings_of_another_kind_of_run_list_everything_that_differs(model_and_data, tmp_path):
    path = tmp_path / "log.tsv"
    interrupted_part(model_and_data, path, 4)
    Path(f"{path}.json").write_text('{"command": "train"}')  # valid JSON with none of certify's settings
    assert refusal(model_and_data, path) == (f"{path} was started with different sigma, n0, n, alpha, seed, skip, "
                                             "max_index, precision, data; resume with the same settings, or write to "
                                             "another --out")


def test_a_run_stopped_between_merge_and_clean_up_finishes_without_recomputing(model_and_data, reference_log,
                                                                              tmp_path):
    # The merged log is written, the part files are still there, the json does not say complete yet.
    path = tmp_path / "log.tsv"
    header, *rows = reference_log.read_text().splitlines(keepends=True)
    column = header.split("\t").index("time")
    marked = ["\t".join(MARKER_TIME if k == column else f for k, f in enumerate(row.split("\t"))) for row in rows]
    copy_run(reference_log, path, edit_json=lambda c: {**c, "complete": False},
             edit_log=lambda text: header + "".join(marked))
    Path(f"{path}.part-rank0").write_text(header + "".join(marked[:6]))
    Path(f"{path}.part-rank1").write_text(header + "".join(marked[6:]))
    model, data = model_and_data
    certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert kept_indices(path) == INDICES
    assert log_rows(path) == log_rows(reference_log)
    assert not part_paths(path)
    assert json.loads(Path(f"{path}.json").read_text())["complete"] is True


def test_a_part_file_that_cannot_be_opened_is_named(model_and_data, tmp_path, monkeypatch):
    import builtins
    import errno
    import io

    real_open = io.open
    path = tmp_path / "log.tsv"

    def refusing_open(file, mode="r", *args, **kwargs):
        if str(file) == f"{path}.part-rank0" and "r" not in mode:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr(io, "open", refusing_open)
    model, data = model_and_data
    with pytest.raises(UserError) as error:
        certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False)
    assert str(error.value) == f"cannot write {path}.part-rank0: Permission denied; check its permissions or write elsewhere"


# -- a model that fails on the data -----------------------------------------------------------------


class Failing(torch.nn.Module):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def forward(self, x):
        raise self.error


@pytest.mark.parametrize("error,shown", [
    (RuntimeError("x" * 250 + "\nthe rest of the traceback"), "x" * 200),
    (RuntimeError("  mat1 and mat2 shapes cannot be multiplied (20x64 and 3x10)\n"),
     "mat1 and mat2 shapes cannot be multiplied (20x64 and 3x10)"),
    (RuntimeError(), "RuntimeError"),
    (RuntimeError(" \n "), "RuntimeError"),
])
def test_a_model_that_fails_on_the_data_is_named_before_anything_is_written(error, shown, model_and_data, tmp_path):
    _, data = model_and_data
    with pytest.raises(UserError) as caught:
        certify_dataset(Failing(error), data, SETTINGS, tmp_path / "log.tsv", ctx=CPU, progress=False)
    assert str(caught.value) == f"the model fails on this data ({shown}); certify it on the data it was trained for"
    assert list(tmp_path.iterdir()) == []


# -- what the run shows while it works ----------------------------------------------------------------


class ForwardClock:
    """Stands in for time.perf_counter: one second passes per forward pass of the model and none otherwise,
    so every time the run measures is exact."""

    def __init__(self, model):
        self.now = 1000.0
        model.register_forward_pre_hook(self.tick)

    def tick(self, module, args):
        self.now += 1.0

    def __call__(self):
        return self.now


def clocked_model(monkeypatch):
    torch.manual_seed(0)
    model = Float64Linear().eval()  # the same weights as model_and_data's
    monkeypatch.setattr(time, "perf_counter", ForwardClock(model))
    return model


def bar_states(text):
    return [state.strip() for state in text.split("\r") if state.strip()]


def test_the_progress_bar_counts_examples_and_noise_samples_per_second(model_and_data, reference_log, tmp_path,
                                                                       capsys, monkeypatch):
    _, data = model_and_data
    model = clocked_model(monkeypatch)
    # batch size >= n: each example is two forward passes (n0 = 20, then n = 300 samples), two "seconds"
    settings = dataclasses.replace(SETTINGS, batch_size=512)
    path = certify_dataset(model, data, settings, tmp_path / "log.tsv", ctx=CPU)  # progress is on by default
    out, err = capsys.readouterr()
    assert out == ""  # nothing to resume, nothing to say
    states = bar_states(err)
    assert states[0].startswith("certify σ=0.5:   0%|") and states[0].endswith("| 0/10 [00:00<?, ?img/s]")
    assert states[-1].startswith("certify σ=0.5: 100%|") and "| 10/10 [" in states[-1]
    rates = [state for state in states if "samples/s" in state]
    assert len(rates) >= 10
    # (20 + 300) samples per example in 2 seconds, whatever the number of examples done
    assert all(re.search(r"img/s, 30.0 certificates/min, 320 samples each, 160 samples/s\]$", state)
               for state in rates), rates
    assert log_rows(path) == log_rows(reference_log)
    assert [line.split("\t")[5] for line in path.read_text().splitlines()[1:]] == ["0:00:02"] * 10


class FakeTerminal(io.StringIO):
    """A terminal of a given width (a pseudo-terminal's size) that keeps what is written to it."""

    def __init__(self, columns):
        super().__init__()
        self.master, self.slave = os.openpty()
        self.resize(columns)

    def resize(self, columns):
        import fcntl
        import struct
        import termios

        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))

    def isatty(self):
        return True

    def fileno(self):
        return self.slave

    def close_pty(self):
        os.close(self.master)
        os.close(self.slave)


class Resizing(torch.utils.data.Dataset):
    """Resizes the terminal when example `when` is fetched."""

    def __init__(self, dataset, when, terminal, columns):
        self.dataset, self.when, self.terminal, self.columns, self.info = dataset, when, terminal, columns, dataset.info

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i == self.when:
            self.terminal.resize(self.columns)
        return self.dataset[i]


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_the_progress_bar_follows_a_resized_terminal_and_stays_off_when_asked(model_and_data, tmp_path,
                                                                              monkeypatch):
    model, data = model_and_data
    terminal = FakeTerminal(61)
    try:
        monkeypatch.setattr(sys, "stderr", terminal)
        certify_dataset(model, Resizing(data, INDICES[5], terminal, 101), SETTINGS, tmp_path / "a.tsv", ctx=CPU,
                        progress=False)
        assert terminal.getvalue() == ""  # no bar on a terminal either
        terminal.resize(61)
        certify_dataset(model, Resizing(data, INDICES[5], terminal, 101), SETTINGS, tmp_path / "b.tsv", ctx=CPU,
                        progress=True)
    finally:
        terminal.close_pty()
    states = [state.rstrip("\n") for state in terminal.getvalue().split("\r") if state.strip()]
    assert len(states[0]) == 60 and "| 0/10 [" in states[0]  # tqdm leaves the last column free
    assert len(states[-1]) == 100 and "| 10/10 [" in states[-1]


def test_rank_0_of_two_shows_its_own_rate_counts_both_and_names_what_rank_1_owes(model_and_data, tmp_path,
                                                                                 capsys, monkeypatch):
    # Rank 0 of a two-process run whose rank 1 never delivered: its bar advances by the world size (and stops
    # at the total), its rate is its own, and the merge names the examples rank 1 owes.
    import torch.distributed as dist

    _, data = model_and_data
    model = clocked_model(monkeypatch)
    settings = dataclasses.replace(SETTINGS, batch_size=512, skip=56)  # 9 examples: rank 0 certifies 5
    indices = select_indices(500, 56, -1)
    assert len(indices) == 9
    path = tmp_path / "log.tsv"
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(UserError) as error:
            certify_dataset(model, data, settings, path, ctx=dataclasses.replace(CPU, world_size=2))
    finally:
        dist.destroy_process_group()
    assert str(error.value) == (f"4 examples are missing from {path}'s part files (first: {indices[1]}); "
                                "re-run the same command to finish them")
    states = bar_states(capsys.readouterr().err)
    assert "| 9/9 [" in states[-1] and not any("10/9" in state for state in states)
    rates = [state for state in states if "samples/s" in state]
    assert rates and all(state.endswith("img/s, 30.0 certificates/min, 320 samples each, 160 samples/s (this process)]")
                         for state in rates), rates
    rows = [int(line.split("\t")[0]) for line in Path(f"{path}.part-rank0").read_text().splitlines()[1:]]
    assert rows == indices[0::2]
    # one process finishes the job
    certify_dataset(model, data, settings, path, ctx=CPU, progress=False)
    assert [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]] == indices


# -- arithmetic and memory layout ---------------------------------------------------------------------


class ThreeChannels(torch.utils.data.Dataset):
    """The digits as 3-channel images, where channels-last memory differs from the default layout."""

    def __init__(self, dataset):
        self.dataset, self.info = dataset, dataset.info

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, label = self.dataset[i]
        return x.repeat(3, 1, 1), label


def test_auto_precision_is_probed_as_the_run_will_compute_and_then_used(model_and_data, tmp_path, monkeypatch):
    from rrcm.smoothing import precision

    _, data = model_and_data
    probes = []

    def probe(*args, **kwargs):
        probes.append(kwargs.get("channels_last"))
        return precision.Decision("bf16", "the probe says so")

    monkeypatch.setattr(precision, "choose_precision", probe)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10)).eval()
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(
        (out.dtype, args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous(),
         module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous())))
    settings = dataclasses.replace(SETTINGS, precision="auto", channels_last=True, skip=250)
    path = tmp_path / "log.tsv"
    certify_dataset(model, ThreeChannels(data), settings, path, ctx=CPU, progress=False)
    assert probes == [True]
    config = json.loads(Path(f"{path}.json").read_text())
    assert config["settings"]["precision"] == "bf16" and config["settings"]["channels_last"] is True
    assert (config["precision_choice"]["requested"], config["precision_choice"]["precision"],
            config["precision_choice"]["reason"]) == ("auto", "bf16", "the probe says so")
    # every batch ran in bf16, on channels-last inputs and weights
    assert seen and set(seen) == {(torch.bfloat16, True, True)}


def test_a_finished_run_says_so_and_does_nothing(model_and_data, reference_log, tmp_path, capsys):
    path = tmp_path / "log.tsv"
    copy_run(reference_log, path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model, data = model_and_data
    capsys.readouterr()
    assert certify_dataset(model, data, SETTINGS, path, ctx=CPU, progress=False) == path
    assert capsys.readouterr() == (f"{path} is already complete (10 examples); nothing to do\n", "")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_channels_last_runs_channels_last_inputs_through_channels_last_weights(model_and_data, tmp_path):
    _, data = model_and_data
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10)).eval()
    seen = []
    model[0].register_forward_pre_hook(lambda module, args: seen.append(
        (args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous(),
         module.weight.is_contiguous(memory_format=torch.channels_last) and not module.weight.is_contiguous())))
    settings = dataclasses.replace(SETTINGS, channels_last=True, skip=250)
    certify_dataset(model, ThreeChannels(data), settings, tmp_path / "log.tsv", ctx=CPU, progress=False)
    assert seen and set(seen) == {(True, True)}
