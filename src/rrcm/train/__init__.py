"""Training: one engine (`engine.py`) and its tasks: classifiers under every objective (`classifier.py`,
`objectives.py`) and rRCM pre-training (`pretrain.py`); the DDPM denoiser task lives in `baselines/denoiser.py`."""
