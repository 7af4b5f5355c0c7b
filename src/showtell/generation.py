"""Beam search, as im2txt's CaptionGenerator, batched over images.

A pure function over `step(tokens, state) -> (log_probs, state)`: it knows nothing
about images, encoders or words; tokens are ids and a state is a tuple of tensors
whose first dimension is the caption (one row per partial caption).

The algorithm is im2txt's, per image (`inference_utils/caption_generator.py`), with
the top-k it intended (a 2019 change to it kept everything *but* the top k):
- start from the start word with the image's state and log-probability 0;
- at each of at most `max_caption_length - 1` steps, extend every partial caption by
  its `beam_size` most likely words, skipping words with p < 1e-12; the new
  log-probability is the old one plus log p;
- a caption ending in the end word joins the completed set, with score
  logprob / len(caption) ** length_normalization_factor when the factor is > 0
  (len counts the start and end words), otherwise score = logprob; other captions
  join the partial set, scored by logprob; each set keeps its best `beam_size`;
- stop when an image has no partial captions left or at the maximum length; return
  the completed captions best first, or, if none completed, the partial ones.

Ties are broken deterministically where im2txt's heaps left them to their layout:
among equal probabilities the lower word id comes first (im2txt's stable sort), among
equal scores the caption that entered its set earlier wins, and new candidates are
ordered by their parent's rank, then by word rank.

Batched: every live partial caption of every image goes through one `step` call per
time step; an image whose partial captions are exhausted leaves the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

State = tuple[torch.Tensor, ...]
StepFn = Callable[[torch.Tensor, State], tuple[torch.Tensor, State]]
MIN_LOG_PROB = math.log(1e-12)  # im2txt skipped words with p < 1e-12


@dataclass(frozen=True)
class Caption:
    tokens: tuple[int, ...]  # from the start word; ends with the end word when complete
    logprob: float  # sum of log p of every word after the start word
    score: float  # logprob, length-normalised for completed captions


def _top_words(log_probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best words of each row, ties going to the lower word id (stable)."""
    values, indices = log_probs.topk(k, dim=1)  # (N, k)
    # topk is not stable: where the k-th value is tied, or tied values sit inside the
    # top k, fall back to a stable sort for those rows only (rare outside tests).
    tied = (log_probs >= values[:, -1:]).sum(1) > k
    if k > 1:
        tied |= (values[:, 1:] == values[:, :-1]).any(1)
    rows = tied.nonzero().flatten()
    if len(rows):
        sorted_values, sorted_indices = log_probs[rows].sort(dim=1, descending=True, stable=True)
        values[rows], indices[rows] = sorted_values[:, :k], sorted_indices[:, :k]
    return values, indices


def _best(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best scores per row, earlier entries winning ties: (B, k)."""
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :k]


def beam_search(
    step: StepFn,
    initial_state: State,
    start_id: int,
    end_id: int,
    beam_size: int = 3,
    max_caption_length: int = 20,
    length_normalization_factor: float = 0.0,
) -> list[list[Caption]]:
    """Captions for each of the B images whose states are `initial_state` ((B, ...)
    tensors): for each image, up to `beam_size` captions, best first."""
    if beam_size < 1 or max_caption_length < 1:
        raise ValueError("beam_size and max_caption_length must be at least 1")
    b, k = initial_state[0].shape[0], beam_size
    device = initial_state[0].device
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=device)
    image_of = torch.arange(b, device=device)

    # Partial captions: k slots per image, rank order (slot 0 best). Dead slots: -inf.
    tokens = torch.full((b, k, 1), start_id, dtype=torch.long, device=device)  # (B, k, t)
    # Log-probabilities accumulate in float64 whatever the model's precision.
    logprob = torch.full((b, k), float("-inf"), dtype=torch.float64, device=device)  # (B, k)
    logprob[:, 0] = 0.0
    state = tuple(s.repeat_interleave(k, dim=0) for s in initial_state)  # (B*k, ...)

    # Completed captions: k slots per image, padded to the maximum length.
    done_tokens = torch.full((b, k, max_caption_length), end_id, dtype=torch.long, device=device)
    done_length = torch.zeros(b, k, dtype=torch.long, device=device)
    done_logprob = torch.full((b, k), float("-inf"), dtype=torch.float64, device=device)
    done_score = torch.full((b, k), float("-inf"), dtype=torch.float64, device=device)

    for t in range(max_caption_length - 1):
        live = logprob.isfinite()  # (B, k)
        if not live.any():
            break
        rows = live.flatten().nonzero().flatten()  # the live partial captions only
        all_live = len(rows) == b * k
        word_log_probs, new_state = step(
            tokens.flatten(0, 1)[rows, -1], state if all_live else tuple(s[rows] for s in state)
        )
        values, words = _top_words(word_log_probs.double(), k)  # (N, k)

        # Candidates per image: parent slot p, word rank r at position p * k + r.
        cand_lp = torch.full((b * k, k), float("-inf"), dtype=torch.float64, device=device)
        cand_word = torch.zeros(b * k, k, dtype=torch.long, device=device)
        valid = values >= MIN_LOG_PROB
        cand_lp[rows] = torch.where(valid, logprob.flatten()[rows].unsqueeze(1) + values, neg_inf)
        cand_word[rows] = words
        cand_lp, cand_word = cand_lp.view(b, k * k), cand_word.view(b, k * k)  # (B, k*k)
        parent = torch.arange(k * k, device=device) // k  # (k*k,) parent slot of each

        # Completed candidates merge into the completed set (existing ones first).
        ends = cand_word == end_id
        length = t + 2  # start word + t + 1 words, the end word included
        norm = length**length_normalization_factor if length_normalization_factor > 0 else 1.0
        new_done_lp = torch.where(ends, cand_lp, neg_inf)
        merged_score = torch.cat([done_score, new_done_lp / norm], dim=1)  # (B, k + k*k)
        keep = _best(merged_score, k)  # (B, k)
        from_new = keep >= k
        new_index = (keep - k).clamp(min=0)
        cand_tokens = torch.cat(
            [
                tokens.gather(1, parent.expand(b, -1).unsqueeze(2).expand(-1, -1, t + 1)),
                cand_word.unsqueeze(2),
            ],
            dim=2,
        )  # (B, k*k, t + 2)
        padded = torch.full((b, k * k, max_caption_length), end_id, dtype=torch.long, device=device)
        padded[:, :, : t + 2] = cand_tokens
        done_tokens = torch.where(
            from_new.unsqueeze(2),
            padded.gather(1, new_index.unsqueeze(2).expand(-1, -1, max_caption_length)),
            done_tokens.gather(
                1, keep.clamp(max=k - 1).unsqueeze(2).expand(-1, -1, max_caption_length)
            ),
        )
        done_length = torch.where(from_new, length, done_length.gather(1, keep.clamp(max=k - 1)))
        done_logprob = torch.where(
            from_new,
            new_done_lp.gather(1, new_index),
            done_logprob.gather(1, keep.clamp(max=k - 1)),
        )
        done_score = merged_score.gather(1, keep)

        # The best k other candidates become the partial captions.
        partial_lp = torch.where(ends, neg_inf, cand_lp)
        chosen = _best(partial_lp, k)  # (B, k)
        logprob = partial_lp.gather(1, chosen)
        tokens = cand_tokens.gather(1, chosen.unsqueeze(2).expand(-1, -1, t + 2))
        # State rows: the chosen candidate's parent, after this step, gathered once from
        # the stepped rows (a state may be large: an attending model's memory). A dead
        # slot gets some row's state; it is never stepped.
        source = (image_of.unsqueeze(1) * k + parent[chosen]).flatten()  # (B*k,)
        if not all_live:
            position = torch.zeros(b * k, dtype=torch.long, device=device)
            position[rows] = torch.arange(len(rows), device=device)
            source = position[source]  # -> rows of new_state
        state = tuple(part[source].to(s.dtype) for s, part in zip(state, new_state, strict=True))

    results = []
    for i in range(b):
        completed = [
            Caption(
                tuple(done_tokens[i, j, : done_length[i, j]].tolist()),
                float(done_logprob[i, j]),
                float(done_score[i, j]),
            )
            for j in range(k)
            if done_score[i, j].isfinite()
        ]
        if not completed:  # never a mixture: partial captions only when none completed
            completed = [
                Caption(tuple(tokens[i, j].tolist()), float(logprob[i, j]), float(logprob[i, j]))
                for j in range(k)
                if logprob[i, j].isfinite()
            ]
        results.append(completed)
    return results
