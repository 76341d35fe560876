"""rrcm: certified L2 robustness by randomized smoothing (rRCM and its baselines)."""

__version__ = "0.1.0"

# The package's modules that register model archs of their own with `rrcm.models.register_arch`
# (beyond the built-in ones `rrcm.models` registers itself). The model registry imports them the
# first time it is asked for an arch it does not hold, or for the list of all archs; see
# `rrcm.models.registry`. Importing them is cheap (no diffusers).
ARCH_MODULES: tuple[str, ...] = ("rrcm.baselines.dds",)
