"""What the noise streams, the in-place noisy batch and the torn-line repair promise beyond their numbers: a
stream's chunk is CHUNK_ELEMENTS numbers whatever the image size, fitting requests are views of the chunk, the
CPU draws whole chunks straight into the caller's buffer, the model sees contiguous batches whatever x's
strides, a complete part file is never rewritten, and merging part files does not depend on the locale."""

import locale
import os
import sys
from pathlib import Path

import pytest
import torch

from rrcm.certlog import format_row, header_line
from rrcm.smoothing import Smooth
from rrcm.smoothing.noise import CHUNK_ELEMENTS, ESTIMATION, SELECTION, NoiseStream, derive_seed
from rrcm.smoothing.runner import _merge_parts, _repair_torn_line


@pytest.mark.parametrize("shape,chunk", [((1, 1, 1), 65536), ((1,), 65536), ((3, 0, 2), 65536),
                                         ((1, 2, 2), 16384), ((3, 32, 32), 21), ((1, 300, 300), 1)])
def test_a_stream_draws_chunks_of_chunk_elements_numbers_even_for_one_pixel(shape, chunk):
    # CHUNK_ELEMENTS // numel rows per chunk (at least one row); a one-pixel (or empty) image is no exception,
    # and the first sample costs exactly one chunk of the example's generator.
    assert CHUNK_ELEMENTS == 1 << 16
    stream = NoiseStream(shape, "cpu", seed=3, idx=1, stage=ESTIMATION)
    assert stream.chunk == chunk
    first = stream.take(1)
    reference = torch.Generator().manual_seed(derive_seed(3, 1, ESTIMATION))
    drawn = torch.randn((chunk, *shape), generator=reference)
    assert torch.equal(first, drawn[:1])
    assert torch.equal(stream.generator.get_state(), reference.get_state())


def test_take_hands_out_views_of_the_chunk_whenever_the_request_fits_even_exactly():
    shape = (1, 2, 2)  # 16384 rows per chunk
    whole = NoiseStream(shape, "cpu", seed=1, idx=0, stage=ESTIMATION).take_into(torch.empty(16384 + 2, *shape))
    stream = NoiseStream(shape, "cpu", seed=1, idx=0, stage=ESTIMATION)
    first = stream.take(1)  # draws the chunk
    middle = stream.take(10)
    rest = stream.take(16384 - 11)  # exactly what is left of the chunk
    after = stream.take(2)  # the next chunk
    row = 4 * middle.element_size()
    # no copies: the last 16373 rows are the very memory that follows the 10 before them
    assert middle.untyped_storage().data_ptr() == rest.untyped_storage().data_ptr()
    assert rest.data_ptr() == middle.data_ptr() + 10 * row
    assert after.untyped_storage().data_ptr() != rest.untyped_storage().data_ptr()
    assert torch.equal(torch.cat([first, middle, rest, after]), whole)


@pytest.mark.parametrize("chunks", [1, 2])
def test_take_into_draws_whole_chunks_straight_into_out_on_the_cpu(monkeypatch, chunks):
    shape = (1, 2, 2)
    chunk = 16384
    want = NoiseStream(shape, "cpu", seed=6, idx=2, stage=SELECTION).take(chunks * chunk + 3).clone()
    calls = []
    randn = torch.randn

    def spy(*args, **kwargs):
        out = kwargs.get("out")
        calls.append(None if out is None else (out.data_ptr(), tuple(out.shape)))
        return randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", spy)
    stream = NoiseStream(shape, "cpu", seed=6, idx=2, stage=SELECTION)
    out = torch.empty(chunks * chunk, *shape)
    assert stream.take_into(out) is out  # exactly whole chunks: each drawn into its rows of out, none allocated
    row = 4 * out.element_size()
    assert calls == [(out.data_ptr() + c * chunk * row, (chunk, *shape)) for c in range(chunks)]
    tail = stream.take_into(torch.empty(3, *shape))  # less than a chunk: a chunk of the stream's own
    assert calls[chunks:] == [None]
    assert torch.equal(torch.cat([out, tail]), want)


class Contiguity(torch.nn.Module):
    """Records each batch it is given (a copy) and whether it was contiguous."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, batch):
        self.seen.append((batch.is_contiguous(), batch.clone()))
        return torch.zeros(batch.shape[0], 2)


@pytest.mark.parametrize("num,batch_size", [(1, 4), (5, 4), (8, 8)])
def test_the_model_sees_contiguous_batches_whatever_the_strides_of_x(num, batch_size):
    # An HWC image permuted to CHW (no .contiguous()) is x + σ·δ in the model's own NCHW layout, one sample
    # as well as many: the same batches as for the contiguous copy of x.
    hwc = torch.rand((4, 5, 3), generator=torch.Generator().manual_seed(2))
    x = hwc.permute(2, 0, 1)
    assert not x.is_contiguous()
    permuted, contiguous = Contiguity(), Contiguity()
    Smooth(permuted, 2, 0.25, seed=1).sample_counts(x, num, batch_size, idx=3, stage=ESTIMATION)
    Smooth(contiguous, 2, 0.25, seed=1).sample_counts(x.contiguous(), num, batch_size, idx=3, stage=ESTIMATION)
    assert [flag for flag, _ in permuted.seen] == [True] * len(contiguous.seen)
    assert len(permuted.seen) == -(-num // batch_size)
    for (_, got), (_, want) in zip(permuted.seen, contiguous.seen):
        assert torch.equal(got, want)


def test_repair_leaves_a_complete_part_file_untouched(tmp_path):
    # Only a torn last line is cut; a complete file (or an empty one) is not rewritten, so resuming never
    # truncates and rewrites rows that were already certified.
    then = 1_000_000_000 * 10**9
    for data in (b"idx\tlabel\n0\t1\n", b""):
        part = tmp_path / "log.tsv.part-rank0"
        part.write_bytes(data)
        os.utime(part, ns=(then, then))
        _repair_torn_line(part)
        assert part.read_bytes() == data
        assert part.stat().st_mtime_ns == then
    torn = tmp_path / "log.tsv.part-rank1"
    torn.write_bytes(b"idx\tlabel\n0\t1\n5\t")
    _repair_torn_line(torn)
    assert torn.read_bytes() == b"idx\tlabel\n0\t1\n"



@pytest.mark.skipif(sys.flags.utf8_mode, reason="Python's UTF-8 mode ignores the locale's encoding")
def test_merging_reads_part_files_as_utf8_whatever_the_locale(tmp_path):
    # read_log accepts a part file that an editor saved with a byte-order mark, so the resume counts its rows;
    # the merge must read it too, also under an ASCII locale (C, as without Python's UTF-8 coercion).
    rows = [format_row({"idx": i, "label": 1, "predict": 1, "radius": 0.25, "correct": 1, "time": 2.5, "cA": 1,
                        "nA": 95, "n0": 10, "n": 100, "sigma": 0.5, "alpha": 0.001, "seed": 0, "pA_lower": 0.9})
            for i in (0, 1)]
    log = tmp_path / "log.tsv"
    part = Path(f"{log}.part-rank0")
    part.write_bytes(("\ufeff" + header_line() + rows[1] + rows[0]).encode("utf-8"))
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        _merge_parts(log, [0, 1])
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert log.read_bytes() == (header_line() + rows[0] + rows[1]).encode("ascii")
    assert not part.exists()
