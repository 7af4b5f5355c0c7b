"""Batched beam search against a straightforward per-image version of im2txt's
CaptionGenerator (with the intended top-k), on small random models."""

from __future__ import annotations

import math

import pytest
import torch

from showtell.generation import Caption, beam_search

START, END = 0, 1


class TinyModel:
    """A random recurrent model over V words, in float64 so that every row's result
    is the same whichever rows share its batch."""

    def __init__(
        self, vocab: int, hidden: int, seed: int, end_bias: float = 0.0, ties: bool = False
    ):
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
        self.recur = torch.randn(hidden, hidden, generator=g, dtype=torch.float64) / hidden**0.5
        self.out = torch.randn(hidden, vocab, generator=g, dtype=torch.float64) * 2
        self.end_bias = end_bias  # added to the end word's logit
        self.ties = ties
        self.calls = 0

    def initial_state(self, images: int, seed: int) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(images, self.embed.shape[1], generator=g, dtype=torch.float64),)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        self.calls += 1
        h = torch.tanh(state[0] @ self.recur + self.embed[tokens])
        logits = h @ self.out
        logits[:, END] += self.end_bias
        if self.ties:  # coarse logits: many exactly equal probabilities
            logits = (logits * 0.5).round()
        return torch.log_softmax(logits, dim=-1), (h,)


def reference(model: TinyModel, state, beam: int, max_len: int, factor: float) -> list[Caption]:
    """im2txt's per-image algorithm, written out plainly."""
    partial = [(0.0, 0.0, [START], state)]  # (score, logprob, tokens, state), best first
    complete: list[tuple[float, float, list[int]]] = []
    for _ in range(max_len - 1):
        if not partial:
            break
        log_probs, new_state = model.step(
            torch.tensor([p[2][-1] for p in partial]), (torch.stack([p[3] for p in partial]),)
        )
        new_partial, new_complete = [], []
        for i, (_, logprob, tokens, _) in enumerate(partial):
            row = log_probs[i].tolist()
            best = sorted(range(len(row)), key=lambda w: -row[w])[:beam]  # stable: low id first
            for w in best:
                if row[w] < math.log(1e-12):
                    continue
                sentence, lp = [*tokens, w], logprob + row[w]
                if w == END:
                    score = lp / len(sentence) ** factor if factor > 0 else lp
                    new_complete.append((score, lp, sentence))
                else:
                    new_partial.append((lp, lp, sentence, new_state[0][i]))
        # Keep the best `beam` of each set; Python's sort is stable, so earlier wins ties.
        complete = sorted(complete + new_complete, key=lambda c: -c[0])[:beam]
        partial = sorted(new_partial, key=lambda c: -c[0])[:beam]
    if not complete:
        complete = [(p[0], p[1], p[2]) for p in partial]
    return [Caption(tuple(c[2]), c[1], c[0]) for c in complete]


def assert_same(batched: list[Caption], expected: list[Caption]) -> None:
    assert [c.tokens for c in batched] == [c.tokens for c in expected]
    for got, want in zip(batched, expected, strict=True):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-9)
        assert got.score == pytest.approx(want.score, abs=1e-9)


@pytest.mark.parametrize("beam", [1, 2, 3, 5])
@pytest.mark.parametrize("factor", [0.0, 0.7, 2.0])
@pytest.mark.parametrize(
    ("end_bias", "ties"), [(0.0, False), (3.0, False), (-1e9, False), (0.0, True)]
)
def test_batched_equals_per_image_reference(
    beam: int, factor: float, end_bias: float, ties: bool
) -> None:
    model = TinyModel(
        vocab=9, hidden=6, seed=beam * 10 + int(factor * 3), end_bias=end_bias, ties=ties
    )
    images = 24
    state = model.initial_state(images, seed=7)
    max_len = 8
    batched = beam_search(model.step, state, START, END, beam, max_len, factor)
    for i in range(images):
        expected = reference(model, state[0][i], beam, max_len, factor)
        assert_same(batched[i], expected)
        assert 1 <= len(batched[i]) <= beam
    if end_bias == -1e9:  # never ends: the partial captions come back, full length
        assert all(len(c.tokens) == max_len and c.tokens[-1] != END for r in batched for c in r)
    if end_bias == 3.0 and beam > 1:  # ends often: every image has completed captions
        assert all(c.tokens[-1] == END for r in batched for c in r)


def test_finished_images_leave_the_batch() -> None:
    model = TinyModel(vocab=9, hidden=6, seed=3, end_bias=40.0)  # ends at once
    state = model.initial_state(5, seed=1)
    sizes = []
    original = model.step

    def step(tokens, s):
        sizes.append(len(tokens))
        return original(tokens, s)

    results = beam_search(step, state, START, END, beam_size=3, max_caption_length=20)
    assert sizes[0] == 5  # one start caption per image
    assert len(sizes) < 19 and all(r[0].tokens == (START, END) for r in results)


def test_p_below_1e_12_is_skipped() -> None:
    def step(tokens, state):
        log_probs = torch.full((len(tokens), 4), -40.0, dtype=torch.float64)  # p ~ 4e-18
        log_probs[:, 2] = 0.0
        return log_probs, state

    state = (torch.zeros(2, 1),)
    results = beam_search(step, state, START, END, beam_size=3, max_caption_length=4)
    assert [c.tokens for c in results[0]] == [(START, 2, 2, 2)]  # the only word with p >= 1e-12
