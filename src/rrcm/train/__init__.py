"""Training: one loop shared by every objective, plus the objectives."""
