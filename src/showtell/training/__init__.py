"""Training: checkpoints, the phase-1 feature cache, and the training loop."""
