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
        parts = []
        while count > 0:
            if self._buffer is None or self._used == self.chunk:
                self._refill()
            k = min(count, self.chunk - self._used)
            parts.append(self._buffer[self._used : self._used + k])
            self._used += k
            count -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts)
