"""Randomized smoothing: statistics, the smoothed classifier, and the dataset runner."""

from .procedures import Certificate, CohenCertify, SequentialCertify
from .smooth import Smooth
from . import stats

__all__ = ["Certificate", "CohenCertify", "SequentialCertify", "Smooth", "stats"]
