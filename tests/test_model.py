from __future__ import annotations

import dataclasses

import pytest
import torch

from showtell.config import ImageConfig, ModelConfig
from showtell.model import ShowAndTell, count_parameters

TINY = ModelConfig(
    encoder="cnn_small",
    vocab_size=23,
    embedding_size=16,
    num_lstm_units=12,
    image=ImageConfig(resize_height=36, resize_width=36, height=32, width=32),
)
# Attending over a 2 x 2 grid of a tiny timm network's stages (8 x 8, 4 x 4, 2 x 2 maps).
ATTENDING = dataclasses.replace(
    TINY,
    encoder="timm/test_efficientnet",
    multiscale_features=True,
    attention_grid=2,
    image=ImageConfig(resize_height=72, resize_width=72, height=64, width=64),
)


def test_parameter_counts_match_im2txt() -> None:
    model = ShowAndTell(ModelConfig(vocab_size=12000))
    assert count_parameters(model.image_embedding) == 1_048_576
    assert count_parameters(model.seq_embedding) == 6_144_000
    # TF's BasicLSTMCell: one kernel [1024, 2048] and one bias [2048]. PyTorch's second
    # bias (hidden-to-hidden) is held at zero and frozen, so the trainable count matches.
    assert count_parameters(model.lstm) == 2_099_200
    assert not model.lstm.bias_hh_l0.requires_grad and model.lstm.bias_hh_l0.abs().sum() == 0
    assert count_parameters(model.logits) == 6_156_000
    assert model.encoder.output_dim == 2048


def test_initialisation() -> None:
    model = ShowAndTell(TINY)
    h = TINY.num_lstm_units
    for p in (model.image_embedding.weight, model.seq_embedding.weight, model.logits.bias):
        assert p.abs().max() <= 0.08
    forget = model.lstm.bias_ih_l0[h : 2 * h]
    assert forget.min() >= 0.92 and forget.max() <= 1.08  # forget-gate bias +1
    others = torch.cat([model.lstm.bias_ih_l0[:h], model.lstm.bias_ih_l0[2 * h :]])
    assert others.abs().max() <= 0.08


@pytest.mark.parametrize("config", [TINY, ATTENDING], ids=["im2txt", "attending"])
def test_forward_equals_step_by_step(config: ModelConfig) -> None:
    torch.manual_seed(0)
    model = ShowAndTell(config).eval()
    images = torch.rand(3, 3, config.image.height, config.image.width) * 2 - 1
    input_seqs = torch.randint(0, 23, (3, 7))
    target_seqs = torch.randint(0, 23, (3, 7))
    features = model.image_features(images)
    teacher = model.log_probs(features, input_seqs)  # (3, 7, 23)

    state = model.encode(images)
    for t in range(7):
        log_probs, state = model.step(input_seqs[:, t], state)
        torch.testing.assert_close(log_probs, teacher[:, t], atol=1e-5, rtol=1e-5)

    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5], dtype=torch.int32)
    loss = model(input_seqs, target_seqs, mask, images=images)
    picked = teacher.gather(2, target_seqs.unsqueeze(2)).squeeze(2)  # (3, 7)
    expected = -(picked * mask).sum() / mask.sum()  # im2txt: sum(loss * mask) / sum(mask)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(input_seqs, target_seqs, mask, features=features), loss)


def test_frozen_encoder_gets_no_gradients_and_keeps_its_statistics() -> None:
    torch.manual_seed(0)
    model = ShowAndTell(TINY)
    model.set_train_encoder(False)
    model.train()
    bn = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    seqs = torch.randint(0, 23, (4, 5))
    mask = torch.ones(4, 5, dtype=torch.int32)
    model(seqs, seqs, mask, images=images).backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.image_embedding.weight.grad is not None
    for m, (mean, var) in zip(bn, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert model.lstm_dropout.training and not model.encoder.training

    # Phase 2: the encoder trains, its batch-norm statistics move, L2 applies to it.
    model.set_train_encoder(True)
    model.train()
    (model(seqs, seqs, mask, images=images) + model.encoder_l2_loss()).backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert any(
        not torch.equal(m.running_mean, mean) for m, (mean, _) in zip(bn, before, strict=True)
    )
    weights = [p for p in model.encoder.parameters() if p.ndim > 1]
    expected = 4e-5 * 0.5 * sum(float(w.detach().pow(2).sum()) for w in weights)
    assert model.encoder_l2_loss().item() == pytest.approx(expected, rel=1e-5)


def test_phase_2_with_frozen_batch_norm_starts_from_phase_1s_features() -> None:
    """--freeze_encoder_batch_norm: in phase 2 the encoder trains, but its batch norm
    normalises as in phase 1 (the features equal the eval-mode encoder's) and keeps its
    running statistics; its scales and shifts get gradients. Without it, the same batch
    gives other features (each batch's statistics)."""
    torch.manual_seed(0)
    model = ShowAndTell(dataclasses.replace(TINY, encoder_dropout_keep_prob=1.0))
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        phase_1 = model.encoder.eval()(images)  # the reference: inference mode throughout
    bn = [m for m in model.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bn]

    model.set_train_encoder(True, freeze_batch_norm=True)
    model.train()
    features = model.encoder(images)
    torch.testing.assert_close(features, phase_1)
    features.sum().backward()
    assert all(m.weight.grad is not None for m in bn)
    for m, (mean, var) in zip(bn, before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
    assert model.encoder.dropout.training  # only batch norm stays in inference mode

    model.set_train_encoder(True)  # im2txt's phase 2
    model.train()
    assert (model.encoder(images) - phase_1).abs().max() > 1e-2


def test_dropout_only_in_training() -> None:
    model = ShowAndTell(TINY)
    features = torch.randn(2, 2048)
    seqs = torch.randint(0, 23, (2, 6))
    model.eval()
    assert torch.equal(model.log_probs(features, seqs), model.log_probs(features, seqs))
    model.train()
    assert not torch.equal(model.log_probs(features, seqs), model.log_probs(features, seqs))


def test_attention_is_spatial_attention_written_out() -> None:
    """`attend` is Lu et al.'s spatial attention with a scaled dot product, checked
    against the formula written out for one output at a time: weights = softmax over
    positions of (W_q h) . m_l / sqrt(H), context = sum_l weights_l m_l, read from
    tanh(W_a [h; context] + b_a)."""
    torch.manual_seed(0)
    model = ShowAndTell(ATTENDING).eval()
    units, positions = ATTENDING.num_lstm_units, model.memory_shape[0]
    assert model.memory_shape == (4, 32 + 48 + 64)  # 2 x 2; timm's stride-8/16/32 stages
    outputs, memory = torch.randn(2, 5, units), torch.randn(2, positions, units)
    with torch.no_grad():
        got = model.attend(outputs, (outputs[:, 0], outputs[:, 0], memory))
    for b in range(2):
        for t in range(5):
            h = outputs[b, t]
            query = model.query.weight.detach() @ h
            scores = torch.tensor([float(query @ memory[b, i]) for i in range(positions)])
            weights = torch.softmax(scores / units**0.5, 0)
            context = sum(weights[i] * memory[b, i] for i in range(positions))
            weight, bias = model.attended.weight.detach(), model.attended.bias.detach()
            expected = torch.tanh(weight @ torch.cat([h, context]) + bias)
            torch.testing.assert_close(got[b, t], expected, atol=1e-5, rtol=1e-5)


def test_attention_reads_the_map_and_im2txt_has_no_attention_layers() -> None:
    """Attending, the words depend on the map, and on where in it things are (a
    learnt embedding of each position: attention alone cannot tell two positions'
    contents apart from their swap); without `attention_grid` the model is im2txt's,
    layer for layer."""
    torch.manual_seed(0)
    model = ShowAndTell(dataclasses.replace(ATTENDING, initializer_scale=0.5)).eval()
    length, channels = model.memory_shape
    features = torch.randn(2, model.encoder.output_dim)
    swapped = features.clone()  # the map's first two positions swapped, pooled kept
    grid = swapped[:, -length * channels :].view(2, length, channels)
    grid[:, [0, 1]] = grid[:, [1, 0]]
    words = torch.randint(0, 23, (2, 4))
    assert (model.log_probs(features, words) - model.log_probs(swapped, words)).abs().max() > 1e-4
    plain = ShowAndTell(TINY)
    assert plain.memory_shape is None and len(plain.encode(torch.zeros(1, 3, 32, 32))) == 2
    assert not any(hasattr(plain, name) for name in ("memory", "query", "attended"))


def test_map_statistics_are_pooled_per_channel() -> None:
    """`set_feature_statistics` from per-dimension statistics: the pooled features keep
    theirs, the map gets each channel's mean and standard deviation over every image
    and position, as computed directly from the values."""
    model = ShowAndTell(ATTENDING)
    length, channels = model.memory_shape
    features = torch.randn(6, model.encoder.output_dim, dtype=torch.float64)
    features[:, -length * channels :] *= torch.linspace(0.5, 3.0, length * channels)
    features[:, -length * channels :] += torch.linspace(-2.0, 2.0, length * channels)
    model.set_feature_statistics(features.mean(0), features.std(0, unbiased=False))
    pooled = features.shape[1] - length * channels
    torch.testing.assert_close(model.feature_mean[:pooled], features[:, :pooled].mean(0).float())
    grid = features[:, pooled:].reshape(6 * length, channels)  # every image and position
    torch.testing.assert_close(
        model.feature_mean[pooled:], grid.mean(0).repeat(length).float(), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        model.feature_std[pooled:],
        grid.std(0, unbiased=False).repeat(length).float(),
        rtol=1e-5,
        atol=1e-5,
    )
