"""Batched beam search against the per-image reference (tests/reference_beam.py, im2txt's
CaptionGenerator written plainly): on small random models, and on a scripted decoder
whose images leave the batch at different steps."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from reference_beam import RefCaption, assert_same_captions, reference_beam_search
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

    def initial_state(self, images: int, seed: int) -> tuple[torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(images, self.embed.shape[1], generator=g, dtype=torch.float64),)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        h = torch.tanh(state[0] @ self.recur + self.embed[tokens])
        logits = h @ self.out
        logits[:, END] += self.end_bias
        if self.ties:  # coarse logits: many exactly equal probabilities
            logits = (logits * 0.5).round()
        return torch.log_softmax(logits, dim=-1), (h,)


def reference(model, state, beam: int, max_len: int, factor: float) -> list[RefCaption]:
    """The per-image reference for one image's state tensor, between this module's START
    and END (read at call time: tests/test_ensemble.py changes them)."""
    return reference_beam_search(model.step, (state,), START, END, beam, max_len, factor).captions


def assert_same(batched: list[Caption], expected: list[RefCaption]) -> None:
    assert_same_captions(batched, expected, tol=1e-9)


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


class Scripted:
    """A decoder scripted per image: each image's rule says, per position, whether the
    end word is forced (+100: every other word has p < 1e-12, so every beam ends
    there), barred (-100) or left to a random table. The table is indexed by (image,
    position, a hash of the caption so far), in float64, and bars 40% of the
    words (-100), so that beams of one image die at different steps too.
    State per caption: (image, position, hash), all integers."""

    FORCE, BAR = 100.0, -100.0
    BARRED = 0.4  # share of barred words

    def __init__(self, rules: list, vocab: int, max_len: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        shape = (len(rules), max_len, 17, vocab)
        self.table = torch.randn(shape, generator=g, dtype=torch.float64) * 1.5
        barred = torch.rand(shape, generator=g) < self.BARRED
        barred[..., END] = False  # the rules decide for the end word
        self.table[barred] = self.BAR
        self.rules = rules  # rules[image](position) -> bias on the end word
        self.seen: list[Counter] = []  # per step call: captions fed, by image

    def initial_state(self) -> tuple[torch.Tensor, ...]:
        images = torch.arange(len(self.rules))
        return images, torch.zeros_like(images), torch.zeros_like(images)

    def step(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        image, position, history = state
        self.seen.append(Counter(image.tolist()))
        history = (history * 31 + tokens + 1) % 1009
        logits = self.table[image, position, history % 17].clone()
        logits[:, END] += torch.tensor(
            [self.rules[i](p) for i, p in zip(image.tolist(), position.tolist(), strict=True)],
            dtype=torch.float64,
        )
        return torch.log_softmax(logits, dim=-1), (image, position + 1, history)


@pytest.mark.parametrize("beam", [1, 2, 3])
@pytest.mark.parametrize("factor", [0.0, 0.7])
def test_images_leave_the_batch_at_different_steps(beam: int, factor: float) -> None:
    """One batch in which image 0 ends at step 1, image 1 at step 4, image 4 at step 2,
    and images 2 (some captions complete, beams > 1) and 3 (none: the partial captions
    come back) run to the maximum length. Each step must see exactly the captions the
    per-image reference feeds its own step (finished images and dead beams gone), and
    each image must get the reference's captions. (It caught an image leaving one step
    late, which the test it replaced, where every image ended at step 1, did not.)"""
    f, b = Scripted.FORCE, Scripted.BAR
    rules = [
        lambda p: f if p == 0 else 0.0,  # ends at step 1 (the first word)
        lambda p: f if p == 3 else b,  # ends at step 4
        lambda p: -2.0,  # never forced: the end word competes (an underdog)
        lambda p: b,  # never ends: partial captions only
        lambda p: f if p == 1 else 0.0,  # ends at step 2
    ]
    max_len = 8
    model = Scripted(rules, vocab=7, max_len=max_len, seed=2)
    state = model.initial_state()
    batched = beam_search(model.step, state, START, END, beam, max_len, factor)
    batched_seen = model.seen
    model.seen = []
    references = []
    for i in range(len(rules)):
        ref = reference_beam_search(
            model.step, tuple(s[i] for s in state), START, END, beam, max_len, factor
        )
        assert_same_captions(batched[i], ref.captions, tol=1e-12)
        references.append(ref)

    # The scenario staggers: each image finished where its rule says.
    assert [r.steps for r in references] == [1, 4, max_len - 1, max_len - 1, 2]
    assert all(c.tokens[-1] == END for i in (0, 1, 4) for c in batched[i])
    assert beam == 1 or any(c.tokens[-1] == END for c in batched[2])
    assert all(c.tokens[-1] != END and len(c.tokens) == max_len for c in batched[3])
    # Each step fed exactly the live captions of the images still running.
    expected_seen = [
        Counter({i: r.rows_per_step[t] for i, r in enumerate(references) if t < r.steps})
        for t in range(max(r.steps for r in references))
    ]
    assert batched_seen == expected_seen
    if beam > 1:  # and beams died inside a running image, not only whole images
        assert any(0 < n < beam for r in references for n in r.rows_per_step[1:])


def test_p_below_1e_12_is_skipped() -> None:
    def step(tokens, state):
        log_probs = torch.full((len(tokens), 4), -40.0, dtype=torch.float64)  # p ~ 4e-18
        log_probs[:, 2] = 0.0
        return log_probs, state

    state = (torch.zeros(2, 1),)
    results = beam_search(step, state, START, END, beam_size=3, max_caption_length=4)
    assert [c.tokens for c in results[0]] == [(START, 2, 2, 2)]  # the only word with p >= 1e-12
