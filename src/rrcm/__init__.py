"""rrcm: certified L2 robustness by randomized smoothing (rRCM and its baselines)."""

__version__ = "0.1.0"
