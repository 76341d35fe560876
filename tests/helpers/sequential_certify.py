"""Run by the sequential-certification tests, alone or under torchrun: certify digits with a float64 linear
model (so that how samples are packed into batches cannot flip an argmax) and write `<out>`.

    python tests/helpers/sequential_certify.py OUT BATCH_SIZE
"""

import sys

import torch

from rrcm.data import load_dataset
from rrcm.distributed import distributed
from rrcm.smoothing.runner import CertifySettings, certify_dataset

SETTINGS = CertifySettings(sigma=0.5, n0=20, n=3000, alpha=0.001, batch_size=128, seed=5, skip=25,
                           procedure="sequential", radii=(0.0, 0.25, 0.5))


class Float64Linear(torch.nn.Module):
    """A seeded linear classifier on 8x8 digits, computed in float64."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(64, 10).double()

    def forward(self, x):
        return self.linear(x.flatten(1).double())


def main(out: str, batch_size: int) -> None:
    with distributed("cpu") as ctx:
        settings = CertifySettings(**{**SETTINGS.__dict__, "batch_size": batch_size})
        certify_dataset(Float64Linear().eval(), load_dataset("digits", "test"), settings, out, ctx=ctx, progress=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
