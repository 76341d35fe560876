"""Per-example Gaussian noise streams.

The noise for example `idx` depends only on (seed, idx, stage) and the image shape, never on the batch
size, the number of processes or where a run was resumed: each stream draws fixed-size chunks from its
own generator and hands out rows in order.
"""

from __future__ import annotations

import numpy as np
import torch

# Noise is drawn in chunks of about this many numbers (256 KiB of float32): large enough to be fast,
# small enough that certifying with few samples does not pay for many unused ones.
CHUNK_ELEMENTS = 1 << 16

SELECTION, ESTIMATION, PREDICTION = 0, 1, 2


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that mixes all keys (numpy's SeedSequence hashing)."""
    # Keys are taken modulo 2**64 so negative ones (calls without an index) are allowed.
    words = np.random.SeedSequence([int(k) % (1 << 64) for k in keys]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1])) & ((1 << 63) - 1)


class NoiseStream:
    """Standard normal samples of a fixed shape, reproducible from (seed, idx, stage)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | str, seed: int, idx: int, stage: int):
        self.shape = tuple(shape)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(derive_seed(seed, idx, stage))
        numel = int(np.prod(self.shape))
        self.chunk = max(1, CHUNK_ELEMENTS // max(1, numel))
        self._buffer: torch.Tensor | None = None
        self._used = 0

    def _refill(self) -> None:
        self._buffer = torch.randn((self.chunk, *self.shape), generator=self.generator, device=self.device)
        self._used = 0

    def take(self, count: int) -> torch.Tensor:
        """The next `count` samples, shape (count, *shape)."""
        if self._buffer is not None and count <= self.chunk - self._used:
            view = self._buffer[self._used : self._used + count]  # no copy
            self._used += count
            return view
        return self.take_into(torch.empty((count, *self.shape), device=self.device))

    def take_into(self, out: torch.Tensor) -> torch.Tensor:
        """Write the next `len(out)` samples into `out` (contiguous, of shape (k, *shape) and of torch's
        default dtype, as `take` returns); return it.

        The same numbers as `take`: rows left in the current chunk are copied; on the CPU a whole chunk
        that fits is drawn straight into `out` (torch.randn into a contiguous view of the same size makes
        the same numbers and advances the generator the same way as into a fresh tensor), which saves
        the per-chunk allocations and the concatenation of the batch.
        """
        dtype = torch.get_default_dtype()
        if out.dtype != dtype or not out.is_contiguous() or tuple(out.shape[1:]) != self.shape or out.device != self.device:
            raise ValueError(f"take_into needs a contiguous {dtype} tensor of shape (k, *{self.shape}) on {self.device}, "
                             f"got {out.dtype} {tuple(out.shape)} on {out.device}")
        count, pos = out.shape[0], 0
        direct = self.device.type == "cpu"
        while pos < count:
            left = 0 if self._buffer is None else self.chunk - self._used
            if left > 0:
                k = min(count - pos, left)
                out[pos : pos + k].copy_(self._buffer[self._used : self._used + k])
                self._used += k
                pos += k
            elif direct and count - pos >= self.chunk:
                torch.randn((self.chunk, *self.shape), generator=self.generator, device=self.device,
                            out=out[pos : pos + self.chunk])
                pos += self.chunk
            else:
                self._refill()
        return out
