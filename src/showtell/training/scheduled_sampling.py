"""Scheduled sampling (Bengio et al. 2015, "Scheduled Sampling for Sequence Prediction
with Recurrent Neural Networks"): how likely training feeds the model its own sampled
word instead of the reference word, step by step.

Teacher forcing (im2txt's training) always feeds the reference word, while generation
feeds the model's own words: the paper behind im2txt credits part of its 2015 challenge
result to closing that gap. The probability rises with the global step s, counted from
`sampling_start_step` (0 before it), and never exceeds `sampling_max_probability` (m):

    constant          m
    linear            m * min(1, s / sampling_ramp_steps)    (the paper's linear decay
                                                              of 1 - p)
    inverse_sigmoid   min(m, 1 - k / (k + exp(s / k)))      (the paper's, k >= 1)

How the words are fed is `ShowAndTell.hidden_states_sampled`; at probability 0 the
step is the plain teacher-forced one (the fused LSTM call), bit for bit.
"""

from __future__ import annotations

import math

from showtell.config import TrainConfig
from showtell.errors import ShowtellError


def sampling_probability(step: int, config: TrainConfig) -> float:
    """The probability of feeding a sampled word at global step `step`."""
    s = step - config.sampling_start_step
    if config.scheduled_sampling == "off" or s < 0:
        return 0.0
    m = config.sampling_max_probability
    if config.scheduled_sampling == "constant":
        return m
    if config.scheduled_sampling == "linear":
        return m * min(1.0, s / config.sampling_ramp_steps)
    if config.scheduled_sampling == "inverse_sigmoid":
        k = config.sampling_sigmoid_k
        exponent = s / k
        if exponent > 700:  # exp overflows; the probability is 1 long before
            return m
        return min(m, 1.0 - k / (k + math.exp(exponent)))
    raise ShowtellError(f"--scheduled_sampling {config.scheduled_sampling}: unknown schedule")
