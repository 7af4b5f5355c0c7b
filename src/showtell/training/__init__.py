"""Training: the phase and its step, batch streams, the phase-1 feature cache, a run's
checkpoints and stops, scheduled sampling, SCST, and the loop (train.py)."""
