"""Randomized smoothing: statistics, the smoothed classifier, and the dataset runner."""

from .smooth import Certificate, Smooth
from . import stats

__all__ = ["Certificate", "Smooth", "stats"]
