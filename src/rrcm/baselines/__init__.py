"""Baselines beside rRCM that are more than a training objective.

- `denoiser`: a DDPM ε-prediction UNet (diffusers) trained on any supported data set
  (`rrcm train-denoiser`), or a pre-trained diffusers checkpoint.
- `dds`: diffusion denoised smoothing (Carlini et al. 2023): denoiser + clean classifier as one base
  classifier, registry arch "dds", which `dds` registers itself (`rrcm dds assemble`, then
  `rrcm certify` as for any model).

The Gaussian-augmentation and consistency baselines (and the clean classifier DDS uses,
`rrcm train --method clean`) are objectives of classifier training in `rrcm.train`.
Importing this package imports neither submodule, and neither imports diffusers at import time
(it takes seconds): only the functions that build or load a UNet do.
"""

from __future__ import annotations

__all__ = ["dds", "denoiser"]
