"""Ensembles: one model's results exactly; several models' beam against the per-image
reference beam search (tests/test_generation.py) over their averaged probabilities;
run-inference with `--checkpoint_path a,b` end to end; one-line errors for checkpoints
that cannot join an ensemble."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

import test_generation
from showtell.checkpoint import load_checkpoint, save_checkpoint
from showtell.cli import main
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.vocab import Vocabulary
from showtell.ensemble import Ensemble
from showtell.errors import ShowtellError
from showtell.generation import beam_search
from showtell.inference import Captioner
from showtell.model import ShowAndTell
from test_generation import END, START, TinyModel, assert_same, reference


class Encoded:
    """A TinyModel with `encode`: B "images" holding a seed -> B initial states."""

    def __init__(self, model: TinyModel) -> None:
        self.model = model

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return self.model.initial_state(len(images), seed=int(images[0]))

    def step(self, tokens, state):
        return self.model.step(tokens, state)


class Averaged:
    """The reference's view of an ensemble: one state tensor (the models' side by side)
    and log(mean(exp(log p))), written out plainly."""

    def __init__(self, models: list[TinyModel], hidden: int) -> None:
        self.models, self.hidden = models, hidden

    def step(self, tokens, state):
        parts = state[0].split(self.hidden, dim=1)
        outs = [m.step(tokens, (s,)) for m, s in zip(self.models, parts, strict=True)]
        mean = torch.stack([lp.exp() for lp, _ in outs]).mean(0)
        return mean.log(), (torch.cat([s[0] for _, s in outs], dim=1),)


def test_an_ensemble_of_one_is_that_model_exactly() -> None:
    model = TinyModel(vocab=9, hidden=6, seed=1, end_bias=1.0)
    state = model.initial_state(16, seed=2)
    ensemble = Ensemble([Encoded(model)])
    assert torch.equal(ensemble.encode(torch.full((16,), 2))[0], state[0])
    tokens = torch.arange(16) % 9
    want, want_state = model.step(tokens, state)
    got, got_state = ensemble.step(tokens, state)
    assert torch.equal(got, want) and torch.equal(got_state[0], want_state[0])
    alone = beam_search(model.step, state, START, END, 3, 10, 0.5)
    together = beam_search(ensemble.step, state, START, END, 3, 10, 0.5)
    assert together == alone  # tokens, log-probabilities and scores, bit for bit


@pytest.mark.parametrize("beam", [1, 3])
def test_ensemble_beam_equals_a_reference_over_averaged_probabilities(beam: int) -> None:
    models = [TinyModel(vocab=9, hidden=6, seed=s, end_bias=0.5) for s in (4, 5, 6)]
    ensemble = Ensemble([Encoded(m) for m in models])
    state = ensemble.encode(torch.full((24,), 7))  # each model's own random states
    results = beam_search(ensemble.step, state, START, END, beam, 8, 0.7)
    averaged = Averaged(models, hidden=6)
    joined = torch.cat(state, dim=1)
    for i in range(len(joined)):
        assert_same(results[i], reference(averaged, joined[i], beam, 8, 0.7))
    first = beam_search(models[0].step, (state[0],), START, END, beam, 8, 0.7)
    assert results != first  # the ensemble is not its first model


def _variant(checkpoint_dir: Path, out: Path, seed: int, **changes) -> Path:
    """A copy of a checkpoint with perturbed weights (and optionally another vocabulary
    or model config), saved as a train_dir."""
    checkpoint = load_checkpoint(checkpoint_dir)
    config = changes.get("model_config", checkpoint.model_config)
    model = ShowAndTell(checkpoint.model_config)
    model.load_state_dict(checkpoint.model_state())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (model.logits.weight, model.seq_embedding.weight):
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    vocab = changes.get("vocab", checkpoint.vocab)
    save_checkpoint(out, checkpoint.step, model, config, vocab, {}, {}, max_to_keep=1)
    return out


@pytest.mark.slow
def test_run_inference_with_two_checkpoints(
    tiny_checkpoint: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    other = _variant(tiny_checkpoint, tmp_path / "other", seed=1)
    files = []
    for i in range(3):
        image = Image.new("RGB", (40, 30), (120, 120, 120))
        image.paste((220, 30 + 60 * i, 30), (5, 5, 20 + 5 * i, 20))
        image.save(tmp_path / f"img{i}.jpg")
        files.append(tmp_path / f"img{i}.jpg")
    pattern = str(tmp_path / "img*.jpg")

    def run(paths: str) -> list[str]:
        args = [f"--checkpoint_path={paths}", f"--input_files={pattern}", "--num_workers=0"]
        assert main(["run-inference", *args, "--max_caption_length=12"]) == 0
        return capsys.readouterr().out.splitlines()

    pair = run(f"{tiny_checkpoint},{other}")
    assert [line for line in pair if not line.startswith("  ")] == [
        f"Captions for image {f.name}:" for f in files
    ]  # each image's captions follow its header (up to the beam size of them)
    alone = run(str(tiny_checkpoint))
    assert run(f"{tiny_checkpoint},{tiny_checkpoint}") == alone
    assert pair != alone

    # The printed beam against the per-image reference over the two models' mean.
    a, b = Captioner(tiny_checkpoint).model, Captioner(other).model
    preprocess = ImagePreprocessor(Captioner(other).image_config, training=False)
    images = torch.stack([preprocess(p.read_bytes()) for p in files])
    vocab = load_checkpoint(tiny_checkpoint).vocab
    hidden = a.config.num_lstm_units

    class Pair:  # one state tensor: (h_a, c_a, h_b, c_b) side by side
        def step(self, tokens, state):
            h_a, c_a, h_b, c_b = state[0].split(hidden, dim=1)
            lp_a, (h_a, c_a) = a.step(tokens, (h_a, c_a))
            lp_b, (h_b, c_b) = b.step(tokens, (h_b, c_b))
            mean = (lp_a.double().exp() + lp_b.double().exp()) / 2
            return mean.log(), (torch.cat([h_a, c_a, h_b, c_b], dim=1),)

    # The reference starts and ends captions with test_generation's START and END ids.
    monkeypatch.setattr(test_generation, "START", vocab.start_id)
    monkeypatch.setattr(test_generation, "END", vocab.end_id)
    with torch.no_grad():
        joined = torch.cat([*a.encode(images), *b.encode(images)], dim=1)
    expected = []
    for path, state in zip(files, joined, strict=True):
        expected.append(f"Captions for image {path.name}:")
        for i, c in enumerate(reference(Pair(), state, 3, 12, 0.0)):
            ids = [t for t in c.tokens[1:] if t != vocab.end_id]
            expected.append(f"  {i}) {' '.join(vocab.decode(ids))} (p={math.exp(c.logprob):f})")
    pattern_p = re.compile(r" \(p=([0-9.]+)\)$")
    assert [pattern_p.sub("", s) for s in pair] == [pattern_p.sub("", s) for s in expected]
    for got, want in zip(pair, expected, strict=True):
        if "(p=" in got:
            p_got, p_want = (float(pattern_p.search(s).group(1)) for s in (got, want))
            assert p_got == pytest.approx(p_want, abs=2e-6)


def test_checkpoints_that_cannot_join_are_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    words = list(reversed(checkpoint.vocab.words))
    other_vocab = _variant(tiny_checkpoint, tmp_path / "vocab", 1, vocab=Vocabulary(words))
    with pytest.raises(ShowtellError, match=r"vocab/model\.ckpt-\d+: its vocabulary differs"):
        Captioner(f"{tiny_checkpoint},{other_vocab}")
    image = dataclasses.replace(checkpoint.model_config.image, resize_height=40, resize_width=40)
    config = dataclasses.replace(checkpoint.model_config, image=image)
    other_image = _variant(tiny_checkpoint, tmp_path / "image", 1, model_config=config)
    with pytest.raises(ShowtellError, match=r"image/model\.ckpt-\d+: its image preprocessing"):
        Captioner([tiny_checkpoint, other_image])
    with pytest.raises(ShowtellError, match="--checkpoint_path is empty"):
        Captioner(" , ")
    # evaluate's --checkpoint_dir arrives as a Path: `a,b` is split there too.
    assert len(Captioner(Path(f"{tiny_checkpoint},{tiny_checkpoint}")).models) == 2
