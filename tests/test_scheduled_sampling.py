"""Scheduled sampling: the schedules' formulas (Bengio et al. 2015), the step-by-step
LSTM against the fused one, the words it feeds, and probability 0 being im2txt's
teacher-forced training bit for bit."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL, tiny_train_config
from showtell.checkpoint import MODEL_FILE
from showtell.cli import main
from showtell.config import ModelConfig, TrainConfig
from showtell.errors import ShowtellError
from showtell.model import ShowAndTell
from showtell.training.scheduled_sampling import sampling_probability
from showtell.training.train import train


def schedule(name: str, **changes: object) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), scheduled_sampling=name, **changes)


def test_schedules_follow_the_papers_formulas() -> None:
    off = schedule("off")
    assert sampling_probability(10**9, off) == 0.0
    constant = schedule("constant", sampling_max_probability=0.3, sampling_start_step=100)
    assert [sampling_probability(s, constant) for s in (0, 99, 100, 10**7)] == [0, 0, 0.3, 0.3]
    linear = schedule(
        "linear", sampling_max_probability=0.4, sampling_start_step=10, sampling_ramp_steps=100
    )
    assert [sampling_probability(s, linear) for s in (0, 10, 60, 110, 500)] == pytest.approx(
        [0, 0, 0.2, 0.4, 0.4]
    )
    # Bengio et al.'s inverse sigmoid: the reference is fed with k / (k + exp(i / k)),
    # so the sampled word with 1/2 at i = k ln k.
    k = 200.0
    sigmoid = schedule("inverse_sigmoid", sampling_max_probability=1.0, sampling_sigmoid_k=k)
    assert sampling_probability(round(k * math.log(k)), sigmoid) == pytest.approx(0.5, abs=1e-3)
    assert sampling_probability(0, sigmoid) == pytest.approx(1 / (k + 1))
    assert sampling_probability(10**9, sigmoid) == 1.0
    capped = dataclasses.replace(sigmoid, sampling_max_probability=0.25)
    assert sampling_probability(10**5, capped) == 0.25
    with pytest.raises(ShowtellError, match="--scheduled_sampling cosine: use one of off"):
        schedule("cosine")
    with pytest.raises(ShowtellError, match=r"--sampling_max_probability 1\.5"):
        schedule("linear", sampling_max_probability=1.5)
    with pytest.raises(ShowtellError, match="--sampling_ramp_steps 0: give 1 or more"):
        schedule("linear", sampling_ramp_steps=0)
    with pytest.raises(ShowtellError, match=r"--sampling_sigmoid_k 0\.5: give 1 or more"):
        schedule("inverse_sigmoid", sampling_sigmoid_k=0.5)
    schedule("constant", sampling_ramp_steps=0)  # a setting its schedule does not use


def tiny_model(vocab_size: int = 30) -> ShowAndTell:
    torch.manual_seed(0)
    config = dataclasses.replace(
        ModelConfig(encoder="cnn_small", embedding_size=16, num_lstm_units=24),
        vocab_size=vocab_size,
    )
    return ShowAndTell(config)


def test_step_by_step_lstm_is_the_fused_one_and_feeds_its_own_words() -> None:
    model = tiny_model().eval()  # no dropout: both paths see the same numbers
    features = torch.randn(64, model.encoder.output_dim)
    words = torch.randint(30, (64, 20))
    with torch.no_grad():
        fused = model.hidden_states(features, words)
        stepped, fed = model.hidden_states_sampled(features, words, 0.0)
    torch.testing.assert_close(stepped, fused, rtol=1e-5, atol=1e-6)
    assert torch.equal(fed, words)

    # A model that all but always predicts word 7: the sampled words are 7, and about
    # half of the words after the start word are sampled at probability 0.5.
    with torch.no_grad():
        model.logits.bias[7] = 50.0
        for probability, low, high in ((1.0, 1.0, 1.0), (0.5, 0.45, 0.55)):
            hidden, fed = model.hidden_states_sampled(features, words, probability)
            replaced = (fed[:, 1:] == 7) & (words[:, 1:] != 7)
            share = replaced.float().sum() / (words[:, 1:] != 7).sum()
            assert low <= share <= high, (probability, share)
            assert torch.equal(fed[:, 0], words[:, 0])
            # The outputs are those of teacher forcing on the words it fed.
            torch.testing.assert_close(
                hidden, model.hidden_states(features, fed), rtol=1e-5, atol=1e-6
            )


def test_gradients_flow_through_the_step_by_step_lstm() -> None:
    model = tiny_model().train()
    features = torch.randn(8, model.encoder.output_dim)
    words = torch.randint(30, (8, 12))
    loss = model(words, words, torch.ones(8, 12), features=features, sampling_probability=0.5)
    loss.backward()
    for name in ("lstm.weight_hh_l0", "seq_embedding.weight", "image_embedding.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_probability_zero_is_teacher_forcing_bit_for_bit(
    synthetic_records: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Six more steps of the tiny model's phase 1 under each setting."""
    runs = {
        "off": {},
        "constant at 0": dict(scheduled_sampling="constant", sampling_max_probability=0.0),
        "linear not started": dict(scheduled_sampling="linear", sampling_start_step=10**6),
        "constant at 0.5": dict(scheduled_sampling="constant", sampling_max_probability=0.5),
    }
    trained = {}
    for i, (name, changes) in enumerate(runs.items()):
        shutil.copytree(tiny_checkpoint, tmp_path / str(i))
        config = tiny_train_config(synthetic_records, tmp_path / str(i), 206, **changes)
        trained[name] = load_file(Path(train(config, TINY_MODEL)["checkpoint"]) / MODEL_FILE)
    for name in ("constant at 0", "linear not started"):
        for key, value in trained["off"].items():
            assert torch.equal(trained[name][key], value), (name, key)
    # Sampled words do change the training.
    key = "lstm.weight_hh_l0"
    assert not torch.equal(trained["constant at 0.5"][key], trained["off"][key])


def test_train_flags_and_one_line_errors(synthetic_records: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--scheduled_sampling", "--sampling_max_probability", "--sampling_ramp_steps"):
        assert flag in help_text
    code = main(
        [
            "train",
            f"--input_file_pattern={synthetic_records / 'train-*'}",
            f"--train_dir={tmp_path / 'run'}",
            "--scheduled_sampling=sometimes",
        ]
    )
    assert code == 2
    assert "error: --scheduled_sampling sometimes: use one of" in capsys.readouterr().err
