"""im2txt's own checkpoints, read as showtell checkpoints.

- The real shared `.index` files of a widely used pretrained im2txt model (copied into
  tests/data with their MIT licence) and its `word_counts.txt`: every variable has its
  place in showtell's model, none is left over (no TensorFlow needed).
- For each TensorFlow era's LSTM names, an im2txt checkpoint written by TensorFlow
  (real layer sizes, random values): showtell's next-word log-probabilities equal
  those of im2txt's inference graph built in TensorFlow (TF's own BasicLSTMCell), and
  its beam search gives the captions and p values of a per-image beam search over
  that graph's step (im2txt's CaptionGenerator).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from showtell.checkpoint import load_checkpoint
from showtell.data.vocab import Vocabulary
from showtell.errors import ShowtellError
from showtell.generation import beam_search
from showtell.model import ShowAndTell, count_parameters
from showtell.tf_import import im2txt
from showtell.tf_import.reader import find_tf_checkpoint, variable_shapes

DATA = Path(__file__).parent / "data" / "im2txt-pretrained-index"
WORD_COUNTS = DATA / "word_counts.txt"
SIZE = 75  # Inception's smallest input: fast, and its padded pools still matter


def _real_words() -> list[str]:
    """The vocabulary file's words, read here independently of showtell's reader."""
    return [line.rsplit(" ", 1)[0] for line in WORD_COUNTS.read_text().splitlines() if line]


def _real_shapes(step: int) -> dict[str, tuple[int, ...]]:
    checkpoint = find_tf_checkpoint(DATA / f"model.ckpt-{step}")
    assert checkpoint is not None and checkpoint.version == 2 and checkpoint.step == step
    return variable_shapes(checkpoint)


@pytest.mark.slow
def test_real_im2txt_index_maps_every_variable(model):
    expected = model.state_dict()
    for step in (1000000, 2000000):
        shapes = _real_shapes(step)
        assert len(shapes) == 383  # 376 InceptionV3 + 6 of the decoder + global_step
        assert im2txt.lstm_era(shapes, "index") == "TF 1.0-1.1"
        config = im2txt.im2txt_model_config(shapes, "index")
        assert (config.vocab_size, config.embedding_size, config.num_lstm_units) == (
            12000,
            512,
            512,
        )
        assert config.image.resize_method == "tf1" and config == model.config
        zeros = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        state = im2txt.im2txt_state_dict(zeros, config, "index")  # raises on any left over
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            assert state[key].shape == value.shape, key
    # im2txt's own parameter counts (its show_and_tell_model_test.py).
    # InceptionV3: conv weights, beta and the moving statistics (TF-slim has no gamma).
    encoder = model.encoder.state_dict()
    assert (
        sum(
            v.numel()
            for k, v in encoder.items()
            if k.endswith(("conv.weight", "bn.bias", "running_mean", "running_var"))
        )
        == 21_802_784
    )
    assert count_parameters(model.image_embedding) == 1_048_576
    assert count_parameters(model.seq_embedding) == 6_144_000
    assert count_parameters(model.lstm) == 2_099_200
    assert count_parameters(model.logits) == 6_156_000
    vocab = Vocabulary.load(WORD_COUNTS)
    assert vocab.words == _real_words() and len(vocab) == 11_520 < 12000


def test_tf_checkpoint_without_vocabulary_or_foreign_fails_in_one_line(tmp_path):
    prefix = DATA / "model.ckpt-2000000"
    with pytest.raises(ShowtellError, match=r"model\.ckpt-2000000: .*give --vocab_file"):
        load_checkpoint(prefix)
    big = tmp_path / "big.txt"
    big.write_text("\n".join(f"w{i} 5" for i in range(12000)))
    with pytest.raises(ShowtellError, match=r"big\.txt: 12001 ids .* more than the 12000"):
        load_checkpoint(prefix, vocab_file=big)
    # A train dir copied from elsewhere: the `checkpoint` file's absolute path is not
    # here, the files beside it are; without the .data file, reading it fails in one line.
    (tmp_path / "model.ckpt-7.index").write_bytes((DATA / "model.ckpt-2000000.index").read_bytes())
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/home/x/train/model.ckpt-7"\n')
    with pytest.raises(ShowtellError, match=r"model\.ckpt-7\.data-00000-of-00001"):
        im2txt.load_im2txt_checkpoint(tmp_path, WORD_COUNTS)


# --- against im2txt's inference graph in TensorFlow ----------------------------------------


@pytest.fixture(scope="module")
def reference():
    from tf_reference import im2txt_reference

    return im2txt_reference()


@pytest.fixture(scope="module")
def model() -> ShowAndTell:
    """im2txt's model in showtell (one build for the module: Inception's takes seconds)."""
    return ShowAndTell(im2txt.im2txt_model_config(_real_shapes(1000000), "index")).eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(3).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)


ERAS = ["TF <= 0.12", "TF 1.0-1.1", "TF >= 1.2"]


@pytest.fixture(scope="module")
def checkpoints(reference, tmp_path_factory) -> dict[str, Path]:
    """One im2txt train dir per era, written by TensorFlow's Saver."""
    dirs = {}
    for number, era in enumerate(ERAS):
        train_dir = tmp_path_factory.mktemp(f"era{number}")
        prefix = reference.save(train_dir / "model.ckpt-5000", era)
        (train_dir / "checkpoint").write_text(f'model_checkpoint_path: "{prefix}"\n')
        dirs[era] = train_dir
    return dirs


def _teacher_forced(reference, features: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The reference's log-softmax after each input word: (B, T, V)."""
    c, h = reference.initial_state(features)
    out = []
    for t in range(tokens.shape[1]):
        _, log_probs, c, h = reference.step(tokens[:, t], c, h)
        out.append(log_probs)
    return np.stack(out, 1)


@pytest.mark.slow
@pytest.mark.parametrize("era", ERAS)
def test_im2txt_checkpoint_gives_tensorflow_log_probs(reference, checkpoints, images, model, era):
    checkpoint = load_checkpoint(checkpoints[era], vocab_file=WORD_COUNTS)
    assert checkpoint.step == 5000 and checkpoint.info["tensorflow_lstm_names"] == era
    assert checkpoint.model_config == model.config
    model.load_state_dict(checkpoint.model_state())
    features = reference.image_features(images)
    tokens = np.random.default_rng(4).integers(0, 12000, (3, 6))
    tokens[:, 0] = 1  # <S>
    expected = _teacher_forced(reference, features, tokens)
    with torch.no_grad():
        got = model.log_probs(torch.from_numpy(features), torch.from_numpy(tokens)).numpy()
        ours_features = model.encoder(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(ours_features, features, atol=1e-4, rtol=1e-4)
    assert np.ptp(expected, axis=-1).min() > 3  # far from uniform: the comparison means something
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)

    # The test tells a wrong gate order and a missing forget bias from the right ones.
    state = {key: value.clone() for key, value in checkpoint.model_state().items()}
    h = checkpoint.model_config.num_lstm_units
    for name, change in {
        "gates i, j, f, o taken as PyTorch's i, f, g, o": lambda w: torch.cat(
            [w[:h], w[2 * h : 3 * h], w[h : 2 * h], w[3 * h :]]
        ),
        "no forget bias": None,
    }.items():
        broken = dict(state)
        if change is None:
            broken["lstm.bias_ih_l0"] = state["lstm.bias_ih_l0"].clone()
            broken["lstm.bias_ih_l0"][h : 2 * h] -= 1.0
        else:
            for key in ("lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.bias_ih_l0"):
                broken[key] = change(state[key])
        model.load_state_dict(broken)
        with torch.no_grad():
            off = model.log_probs(torch.from_numpy(features), torch.from_numpy(tokens)).numpy()
        assert np.abs(off - expected).max() > 1e-2, name


@pytest.mark.slow
def test_im2txt_checkpoint_beam_search_matches_per_image_reference(
    reference, checkpoints, images, model
):
    from tf_reference import reference_beam_search

    words = _real_words()
    start, end = words.index("<S>"), words.index("</S>")
    features = reference.image_features(images)
    expected = []
    for i in range(len(images)):
        c, h = reference.initial_state(features[i : i + 1])
        expected.append(reference_beam_search(reference, (c[0], h[0]), start, end))
    sentences = [sentence for image in expected for sentence, _ in image]
    assert any(sentence[-1] == end for sentence in sentences)  # completed captions
    assert any(sentence[-1] != end for sentence in sentences)  # and images with none
    assert any(len(sentence) >= 3 for sentence in sentences), sentences
    assert any(w >= len(words) for sentence in sentences for w in sentence)  # <UNK> ids

    checkpoint = load_checkpoint(checkpoints["TF >= 1.2"], vocab_file=WORD_COUNTS)
    model.load_state_dict(checkpoint.model_state())
    with torch.no_grad():
        state = model.initial_state(torch.from_numpy(features))
    got = beam_search(model.step, state, start, end, beam_size=3, max_caption_length=20)
    for ours, theirs in zip(got, expected, strict=True):
        assert [list(c.tokens) for c in ours] == [sentence for sentence, _ in theirs]
        # Log-probabilities: sums of ~20 float32 log-softmaxes, each framework its own
        # summation order (1e-4 in log space is 1e-4 relative in probability).
        np.testing.assert_allclose(
            [c.logprob for c in ours], [lp for _, lp in theirs], rtol=0, atol=1e-4
        )
        for caption in ours:  # ids past the vocabulary's words are the unknown word
            assert checkpoint.vocab.decode(caption.tokens) == [
                words[w] if w < len(words) else "<UNK>" for w in caption.tokens
            ]
    # From the images through showtell's own encoder: the same captions.
    with torch.no_grad():
        state = model.encode(torch.from_numpy(images).permute(0, 3, 1, 2))
    from_images = beam_search(model.step, state, start, end, beam_size=3, max_caption_length=20)
    assert [[c.tokens for c in image] for image in from_images] == [
        [c.tokens for c in image] for image in got
    ]


@pytest.mark.slow
def test_run_inference_prints_im2txts_captions_for_a_jpeg(reference, checkpoints, tmp_path, capsys):
    """The seed's "Generating Captions" on an im2txt train dir, and on its conversion:
    the lines im2txt's run_inference printed for the same JPEG (its preprocessing in TF
    ops, its beam search over the TF graph)."""
    from PIL import Image

    from showtell.cli import main
    from tf_reference import im2txt_process_image, reference_beam_search

    rng = np.random.default_rng(5)
    pixels = np.kron(rng.integers(0, 256, (24, 32, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    jpeg = tmp_path / "COCO_val2014_000000224477.jpg"
    Image.fromarray(pixels).save(jpeg, quality=90)
    words = _real_words()
    start, end = words.index("<S>"), words.index("</S>")
    features = reference.image_features(im2txt_process_image(jpeg.read_bytes())[None])
    c, h = reference.initial_state(features)
    lines = [f"Captions for image {jpeg.name}:"]
    for i, (sentence, logprob) in enumerate(
        reference_beam_search(reference, (c[0], h[0]), start, end)
    ):
        # im2txt printed sentence[1:-1]; showtell keeps the last word of a caption that
        # never reached </S> (README: run-inference).
        shown = sentence[1:-1] if sentence[-1] == end else sentence[1:]
        text = " ".join(words[w] if w < len(words) else "<UNK>" for w in shown)
        lines.append(f"  {i}) {text} (p={np.exp(logprob):f})")
    expected = "\n".join(lines) + "\n"

    common = [f"--input_files={jpeg}", "--device=cpu", "--num_workers=0"]
    train_dir = checkpoints["TF 1.0-1.1"]
    run = ["run-inference", f"--checkpoint_path={train_dir}", f"--vocab_file={WORD_COUNTS}"]
    assert main([*run, *common]) == 0
    assert capsys.readouterr().out == expected
    converted = tmp_path / "converted"
    assert (
        main(
            [
                "convert-im2txt-checkpoint",
                f"--checkpoint_path={train_dir / 'model.ckpt-5000'}",
                f"--vocab_file={WORD_COUNTS}",
                f"--output_dir={converted}",
            ]
        )
        == 0
    )
    assert "model.ckpt-5000" in capsys.readouterr().out
    assert main(["run-inference", f"--checkpoint_path={converted}", *common]) == 0
    assert capsys.readouterr().out == expected


@pytest.mark.slow
def test_train_goes_on_with_phase_2_from_an_im2txt_train_dir(
    reference, synthetic_records, tmp_path, capsys
):
    """The seed's phase 2 on im2txt's own phase-1 train dir: it starts from the im2txt
    checkpoint's weights and step, and writes showtell checkpoints into that dir."""
    from conftest import tiny_train_config
    from showtell.training.train import train

    train_dir = tmp_path / "train"
    train_dir.mkdir()
    reference.save(train_dir / "model.ckpt-5000", "TF 1.0-1.1")
    (train_dir / "checkpoint").write_text('model_checkpoint_path: "model.ckpt-5000"\n')
    imported = load_checkpoint(train_dir, vocab_file=synthetic_records / "word_counts.txt")
    config = tiny_train_config(
        synthetic_records, train_dir, 5001, train_inception=True, batch_size=2
    )
    train(config)
    assert "Resuming from" in capsys.readouterr().out
    native = load_checkpoint(train_dir)  # the newest is now showtell's own
    assert native.step == 5001 and native.model_config == imported.model_config
    before, after = imported.model_state(), native.model_state()
    assert before.keys() == after.keys()
    for key in ("logits.bias", "lstm.weight_ih_l0", "encoder.backbone.Conv2d_1a_3x3.conv.weight"):
        change = (after[key] - before[key]).abs().max()
        assert 0 < change < 0.05, key  # one small step from im2txt's weights
