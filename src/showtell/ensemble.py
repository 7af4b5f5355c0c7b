"""Several captioning models as one, for the beam search: the paper's ensembles.

"Show and Tell: Lessons learned from the 2015 MSCOCO Image Captioning Challenge"
(Vinyals et al. 2016) averaged its models' next-word probabilities inside one beam
search. `Ensemble` offers the same `encode(images) -> state` and
`step(tokens, state) -> (log_probs, state)` as one model, so `generation.beam_search`
runs it unchanged: its state is every model's state tuple, concatenated, and its
log-probabilities are log(mean_m p_m) = logsumexp_m(log p_m) - log M, in float64.
It knows nothing about images or words beyond that: the models must share the
vocabulary and the preprocessing of the images they are given (the caller checks).
With one model the result is that model's log-probabilities exactly (logsumexp of one
value is the value, minus log 1 = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch

State = tuple[torch.Tensor, ...]


class Generator(Protocol):
    def encode(self, images: torch.Tensor) -> State: ...

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]: ...


class Ensemble:
    """Next-word probabilities averaged over `models`."""

    def __init__(self, models: Sequence[Generator]) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.models = list(models)
        self._sizes: list[int] | None = None  # each model's number of state tensors

    def encode(self, images: torch.Tensor) -> State:
        """Every model's initial state, concatenated into one tuple."""
        states = [model.encode(images) for model in self.models]
        self._sizes = [len(s) for s in states]
        return tuple(t for s in states for t in s)

    def split(self, state: State) -> list[State]:
        """The concatenated state -> each model's state tuple."""
        if self._sizes is None:
            raise RuntimeError("Ensemble.step before Ensemble.encode")
        parts, start = [], 0
        for size in self._sizes:
            parts.append(tuple(state[start : start + size]))
            start += size
        return parts

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """(N,) words, state -> (N, V) log of the mean probability, the next state."""
        log_probs, states = [], []
        for model, part in zip(self.models, self.split(state), strict=True):
            lp, new = model.step(tokens, part)
            log_probs.append(lp.double())
            states.append(new)
        mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(self.models))
        return mean, tuple(t for s in states for t in s)
