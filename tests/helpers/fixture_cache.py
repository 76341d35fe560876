"""Trained fixtures (a tiny classifier, a tiny encoder) built once and, for mutation runs, kept on disk.

Every mutant's test process is a new pytest session, so a session fixture that trains a model would train
it again for each of thousands of mutants. `tools/mutation.py` builds them once with the unmutated code
into the folder named by $RRCM_TEST_FIXTURE_CACHE before mutmut starts; test processes then copy them
from there. Without that variable (a normal test run) they are trained as before.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

CACHE_VARIABLE = "RRCM_TEST_FIXTURE_CACHE"


def build_tiny_checkpoint(out: Path) -> Path:
    """A LeNet-5 trained for two epochs on digits with Gaussian noise σ = 0.5 (seconds on a CPU)."""
    from rrcm.train.config import TrainConfig
    from rrcm.train.classifier import train_classifier

    cfg = TrainConfig(data="digits", arch="lenet5", sigma=0.5, epochs=2, batch_size=64, lr=0.05, device="cpu")
    return train_classifier(cfg, out, progress=False)


def build_tiny_encoder(out: Path) -> Path:
    """A digits-sized rRCM encoder after two pre-training steps."""
    from rrcm.train.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(data="digits", arch_options={"size": "digits"}, steps=2, batch_size=16, warmup_steps=1,
                         projector_hidden=32, projector_dim=16, blur=False, device="cpu", checkpoint_every=2,
                         log_every=1)
    return pretrain(cfg, out, progress=False)


BUILDERS: dict[str, Callable[[Path], Path]] = {"tiny_checkpoint": build_tiny_checkpoint,
                                               "tiny_encoder": build_tiny_encoder}


def fixture_path(name: str, out: Path) -> Path:
    """The fixture `name` in the empty folder `out`: copied from the cache when there is one, else built."""
    cache = os.environ.get(CACHE_VARIABLE)
    if not cache:
        return BUILDERS[name](out)
    stored = Path(cache) / name
    if not (stored / "path").is_file():
        build_into_cache(name, Path(cache))
    relative = (stored / "path").read_text()
    shutil.copytree(stored / "files", out, dirs_exist_ok=True)
    return out / relative


def build_into_cache(name: str, cache: Path) -> None:
    """Build fixture `name` and store it in `cache` atomically (a half-built one is never seen)."""
    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))
    built = BUILDERS[name](staging / "files")
    (staging / "path").write_text(str(built.relative_to(staging / "files")))
    try:
        staging.rename(cache / name)
    except OSError:  # another process stored it first
        shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":  # python -m tests.helpers.fixture_cache CACHE: build every fixture into CACHE
    import sys

    for fixture in BUILDERS:
        build_into_cache(fixture, Path(sys.argv[1]))
