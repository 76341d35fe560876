"""rrcm.profiling: FLOP counts equal the hand formulas, the /proc/stat load accounting is exact on a fake
/proc/stat and fake clocks, the contended-retry rule, and the machine description. Nothing here depends
on how long anything takes."""

import argparse
import importlib.util
import itertools
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rrcm import profiling
from rrcm.errors import UserError
from rrcm.models import build_model, model_config

ROOT = Path(__file__).resolve().parents[1]


# ---- FLOPs

def test_linear_flops_are_two_in_out():
    model = nn.Linear(7, 5)
    assert profiling.count_flops(model, (7,)) == 2 * 7 * 5


def test_conv2d_flops_are_two_cout_hw_cin_kk():
    model = nn.Conv2d(3, 4, kernel_size=3, padding=1, stride=2)  # 9x9 -> 5x5
    assert profiling.count_flops(model, (3, 9, 9)) == 2 * 4 * 5 * 5 * 3 * 3 * 3


class _Attention(nn.Module):
    """softmax(QKᵀ)V of one sample (heads, length, e + ev): Q = K = the first e channels, V the rest."""

    def __init__(self, e: int):
        super().__init__()
        self.e = e

    def forward(self, x):
        q = x[..., : self.e]
        return F.scaled_dot_product_attention(q, q, x[..., self.e:])


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_attention_flops_are_two_matrix_products(device):
    heads, length, e, ev = 2, 6, 8, 4
    flops = profiling.count_flops(_Attention(e), (heads, length, e + ev), device)
    assert flops == 2 * heads * length * length * e + 2 * heads * length * length * ev


def test_fused_cpu_attention_formula():
    # the formula added for CPU's fused kernel: arguments are the shapes of query, key, value
    assert profiling._sdpa_flops((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4)) == 2 * 2 * 3 * 5 * 7 * (8 + 4)


def test_meta_init_allocates_parameters_on_meta_only():
    with profiling.meta_init():
        model = build_model(model_config("rrcm_vit", num_classes=10, in_channels=1, image_size=8,
                                         mean=[0.5], std=[0.5], size="digits"))
        literal = torch.tensor([1.0, 2.0])
    assert all(p.device.type == "meta" for p in model.parameters())
    assert literal.device.type == "cpu"     # Normalize's checks need real values
    assert torch.empty(2).device.type == "cpu"  # the mode ends with the block


def test_count_model_on_meta():
    counted = profiling.count_model(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (3, 2, 2))
    assert counted == {"params": 12 * 3 + 3, "flops": 2 * 12 * 3, "macs": 12 * 3, "counted_on": "meta"}


class _NeedsValues(nn.Module):
    """A forward that reads a value, which a meta tensor does not have."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) * float(x.abs().sum() >= 0)


def test_count_model_falls_back_to_the_cpu():
    counted = profiling.count_model(_NeedsValues, (4,))
    assert counted["counted_on"] == "cpu" and counted["note"].startswith("meta failed (")
    assert (counted["params"], counted["flops"], counted["macs"]) == (10, 16, 8)


def test_count_model_raises_the_users_error():
    def build():
        raise UserError("checkpoint x describes a model rrcm cannot build")

    with pytest.raises(UserError, match="cannot build"):
        profiling.count_model(build, (1,))


# ---- load from /proc/stat

STAT_LINE = "cpu  100 20 30 400 50 6 7 8 9 10\n"  # user nice system idle iowait irq softirq steal guest guest_nice
BUSY = 100 + 20 + 30 + 6 + 7 + 8


def test_busy_jiffies_leave_out_idle_iowait_and_guest():
    assert profiling.parse_busy_jiffies(STAT_LINE) == BUSY


def test_busy_jiffies_from_a_file(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT_LINE + "cpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert profiling.busy_jiffies(stat) == BUSY
    stat.write_text("not a stat file\n")
    assert profiling.busy_jiffies(stat) is None
    assert profiling.busy_jiffies(tmp_path / "missing") is None


def test_cores_elsewhere():
    # 3 busy seconds on the machine, 1 of them this process's, over 2 wall seconds: 1 core elsewhere
    assert profiling.cores_elsewhere(300, cpu_seconds=1.0, wall_seconds=2.0, ticks=100) == 1.0
    assert profiling.cores_elsewhere(50, cpu_seconds=1.0, wall_seconds=2.0, ticks=100) == 0.0  # clamped
    assert profiling.cores_elsewhere(300, cpu_seconds=0.0, wall_seconds=0.0, ticks=100) == 0.0


def fake_clock(values):
    it = iter(values)
    return lambda: next(it)


def test_stopwatch_on_a_fake_stat_and_clocks(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT_LINE)
    with profiling.Stopwatch(stat_path=stat, clock=fake_clock([10.0, 12.0]),
                             cpu_clock=fake_clock([5.0, 5.5])) as watch:
        stat.write_text("cpu  400 20 30 400 50 6 7 8 9 10\n")  # 300 more busy jiffies
    assert (watch.seconds, watch.cpu_seconds) == (2.0, 0.5)
    assert watch.busy_elsewhere == profiling.cores_elsewhere(300, 0.5, 2.0)


def test_stopwatch_without_proc_stat_reads_no_load(tmp_path):
    with profiling.Stopwatch(stat_path=tmp_path / "missing", clock=fake_clock([0.0, 3.0]),
                             cpu_clock=fake_clock([0.0, 1.0])) as watch:
        pass
    assert (watch.seconds, watch.cpu_seconds, watch.busy_elsewhere) == (3.0, 1.0, 0.0)


def test_wait_for_idle_stops_at_the_first_idle_probe():
    probes = []

    def probe(window):
        probes.append(window)
        return [0.5, 0.3, profiling.IDLE_CORES][len(probes) - 1]

    clock = fake_clock(itertools.count())
    assert profiling.wait_for_idle(10, probe=probe, clock=clock) == 4  # clock read at 0, 1, 2, 3 and 4
    assert probes == [1.0, 1.0, 1.0]


def test_wait_for_idle_gives_up_at_the_limit_and_not_at_all_for_zero():
    probes = []
    busy = lambda window: probes.append(window) or 1.0  # noqa: E731
    assert profiling.wait_for_idle(3, probe=busy, clock=fake_clock(itertools.count())) == 4
    assert len(probes) == 2  # at clock 1 and 2; at 3 the limit is reached
    assert profiling.wait_for_idle(0, probe=busy) == 0.0 and len(probes) == 2


def run_measurements(busy_values, wait_idle):
    values, waits, contended = iter(busy_values), [], []
    result = profiling.measure_uncontended(lambda: next(values), wait_idle=wait_idle, busy=lambda v: v,
                                           on_contended=contended.append, wait=waits.append)
    return result, waits, contended


def test_measure_uncontended_without_waiting_measures_once():
    (value, attempt), waits, contended = run_measurements([0.9, 0.0], wait_idle=0)
    assert (value, attempt, waits, contended) == (0.9, 1, [0], [0.9])


def test_measure_uncontended_redoes_a_contended_measurement():
    (value, attempt), waits, contended = run_measurements([0.9, 0.5, profiling.CONTENDED_CORES], wait_idle=7)
    assert (value, attempt, waits, contended) == (profiling.CONTENDED_CORES, 3, [7, 7, 7], [0.9, 0.5])


def test_measure_uncontended_keeps_the_last_of_the_retries():
    tries = 1 + profiling.CONTENDED_RETRIES
    (value, attempt), _, contended = run_measurements([float(i + 1) for i in range(tries + 1)], wait_idle=1)
    assert (value, attempt, len(contended)) == (float(tries), tries, tries)


def test_time_model_reports_per_sample_medians(one_thread):
    timing = profiling.time_model(nn.Linear(3, 2), (3,), batch_size=4, precision="bf16", repeats=3, warmup=0)
    assert len(timing["seconds_per_forward"]) == 3 and timing["attempts"] == [1, 1, 1]
    assert timing["seconds_per_sample"] == statistics.median(timing["seconds_per_forward"]) / 4
    assert timing["busy_elsewhere_cores"] == max(timing["busy_elsewhere_per_forward"])
    assert {k: timing[k] for k in ("precision", "device", "batch_size", "repeats", "warmup")} == {
        "precision": "bf16", "device": "cpu", "batch_size": 4, "repeats": 3, "warmup": 0}
    with pytest.raises(ValueError, match="precision must be one of"):
        profiling.time_model(nn.Linear(3, 2), (3,), batch_size=1, precision="fp16", repeats=1)


# ---- the machine

CPUINFO = """processor\t: 0
model name\t: Example CPU 9000
flags\t\t: fpu avx2 avx512f amx_tile sse4_2

processor\t: 1
model name\t: Other CPU
flags\t\t: fpu
"""


def test_cpu_name_and_flags_from_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert profiling.cpu_name(path) == "Example CPU 9000"
    assert profiling.cpu_flags(path) == {"fpu", "avx2", "avx512f", "amx_tile", "sse4_2"}
    assert sorted(profiling.cpu_flags(path) & profiling.ISA_FLAGS) == ["amx_tile", "avx2", "avx512f"]
    assert profiling.cpu_flags(tmp_path / "missing") == frozenset()
    assert profiling.cpu_name(tmp_path / "missing")  # what platform knows, never empty


def test_describe_machine():
    machine = profiling.describe_machine()
    assert set(machine) == {"cpu", "gpu", "cpu_flags", "cpu_count", "torch_threads", "torch", "python",
                            "glibc_tunables", "date"}
    assert set(machine["cpu_flags"]) <= profiling.ISA_FLAGS and machine["torch"] == torch.__version__


# ---- benchmarks/certify_throughput.py measures its repeats with rrcm.profiling

@pytest.fixture(scope="module")
def certify_throughput():
    spec = importlib.util.spec_from_file_location("certify_throughput", ROOT / "benchmarks" / "certify_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_certify_throughput_repeats(certify_throughput, monkeypatch, tmp_path):
    # every timed block lasts 1 s of wall and 0.5 s of CPU time, on a machine with no /proc/stat
    monkeypatch.setattr(certify_throughput, "Stopwatch", lambda: profiling.Stopwatch(
        stat_path=tmp_path / "missing", clock=fake_clock(itertools.count()),
        cpu_clock=fake_clock(x / 2 for x in itertools.count())))
    args = argparse.Namespace(model="resnet20", config="baseline", samples=30, batch_size=10, repeats=2,
                              wait_idle=0.0)
    calls = []

    def sample(num, key):
        calls.append((num, key))
        return [num - 1, 1]

    runs = certify_throughput.time_repeats(args, sample)
    assert calls == [(30, 0), (30, 1)]
    assert [list(run) for run in runs] == [["seconds", "samples_per_s", "cpu_cores_used", "busy_elsewhere_cores",
                                           "minor_page_faults_per_batch", "attempt"]] * 2
    assert runs[0] == {"seconds": 1, "samples_per_s": 30.0, "cpu_cores_used": 0.5, "busy_elsewhere_cores": 0.0,
                       "minor_page_faults_per_batch": runs[0]["minor_page_faults_per_batch"], "attempt": 1}
    assert runs[1]["attempt"] == 1
    with pytest.raises(certify_throughput.BenchError, match="counts sum to 29, expected 30"):
        certify_throughput.time_repeats(args, lambda num, key: [num - 1])


def test_cpu_summary_names_the_cpu_and_its_bf16_instructions(monkeypatch):
    monkeypatch.setattr(profiling, "cpu_name", lambda: "Some CPU")
    monkeypatch.setattr(profiling, "cpu_flags", lambda: frozenset({"avx2", "amx_tile", "avx512_bf16", "amx_bf16"}))
    assert profiling.cpu_summary() == "Some CPU (amx_bf16, amx_tile, avx512_bf16)"
    monkeypatch.setattr(profiling, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert profiling.cpu_summary() == "Some CPU (no avx512_bf16, no AMX)"
