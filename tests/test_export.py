"""ONNX export: captions from ONNX Runtime equal the PyTorch ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from showtell.cli import main
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import read_caption_records
from showtell.inference import Captioner

pytest.importorskip("onnxruntime")


def _assert_same_captions(onnx_captioner, torch_captioner: Captioner, images: torch.Tensor) -> None:
    """ONNX Runtime's beams equal PyTorch's: the same tokens, log-probabilities to 1e-4."""
    expected = torch_captioner.caption_images(images)
    got = onnx_captioner.caption_images(images)
    for want, have in zip(expected, got, strict=True):
        assert [c.tokens for c in have] == [c.tokens for c in want]
        for a, b in zip(have, want, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)


def test_onnx_export_captions_like_pytorch(
    tiny_checkpoint: Path, synthetic_records: Path, tmp_path: Path, capsys
) -> None:
    from showtell.export import OnnxCaptioner

    out = tmp_path / "onnx"
    code = main(
        [
            "export",
            f"--checkpoint_path={tiny_checkpoint}",
            "--format=onnx",
            f"--output={out}",
            "--max_caption_length=25",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert {p.name for p in out.iterdir()} >= {
        "encoder.onnx",
        "step.onnx",
        "word_counts.txt",
        "export.json",
    }
    info = json.loads((out / "export.json").read_text())
    assert info["global_step"] == 200 and info["inference"]["max_caption_length"] == 25

    torch_captioner = Captioner(tiny_checkpoint, max_caption_length=25)
    onnx_captioner = OnnxCaptioner(out)
    preprocess = ImagePreprocessor(torch_captioner.image_config, training=False)
    records = list(read_caption_records(synthetic_records / "test-00000-of-00001"))[:7]
    images = torch.stack([preprocess(r.image_data) for r in records])  # batch of 7: dynamic
    _assert_same_captions(onnx_captioner, torch_captioner, images)


@pytest.mark.slow
def test_onnx_export_of_inception_with_tf_slim_pooling_and_tf1_resize(tmp_path: Path) -> None:
    """The inception_v3 encoder pools as TF-slim (a forward pre-hook), multi-scale features
    come from forward hooks, and an imported im2txt model resizes as TF1: all must
    survive export (the graph and export.json)."""
    from showtell.checkpoint import save_checkpoint
    from showtell.config import ImageConfig, ModelConfig
    from showtell.data.vocab import Vocabulary
    from showtell.export import OnnxCaptioner
    from showtell.model import ShowAndTell

    torch.manual_seed(0)
    words = ["<S>", "</S>", "a", "b", "c", "d"]
    (tmp_path / "word_counts.txt").write_text(
        "".join(f"{w} {9 - i}\n" for i, w in enumerate(words))
    )
    vocab = Vocabulary.load(tmp_path / "word_counts.txt")
    image = ImageConfig(resize_height=80, resize_width=80, height=75, width=75, resize_method="tf1")
    config = ModelConfig(
        encoder="inception_v3",
        vocab_size=12,
        embedding_size=16,
        num_lstm_units=16,
        image=image,
        multiscale_features=True,
    )
    save_checkpoint(tmp_path / "train", 1, ShowAndTell(config).eval(), config, vocab, {}, {}, 1)
    out = tmp_path / "onnx"
    assert main(["export", f"--checkpoint_path={tmp_path / 'train'}", f"--output={out}"]) == 0
    assert json.loads((out / "export.json").read_text())["image"]["resize_method"] == "tf1"

    images = torch.rand(3, 3, 75, 75) * 2 - 1
    captioner, onnx_captioner = Captioner(tmp_path / "train"), OnnxCaptioner(out)
    with torch.no_grad():
        model = captioner.model
        state = torch.cat(model.initial_state(model.encoder(images)), 1)  # (3, 2 * units)
        for module in model.encoder.modules():  # count padded cells, as torchvision does
            module._forward_pre_hooks.clear()
        padded = torch.cat(model.initial_state(model.encoder(images)), 1)
    exported = torch.from_numpy(
        np.concatenate(onnx_captioner.encoder.run(None, {"images": images.numpy()}), 1)
    )
    assert torch.allclose(exported, state, atol=1e-5)
    assert (exported - padded).abs().max() > 1e-3  # the check can tell the two poolings apart

    _assert_same_captions(onnx_captioner, Captioner(tmp_path / "train"), images)


def test_onnx_export_of_an_attending_model(tmp_path: Path) -> None:
    """A model that attends carries its memory (B, L, units) in the state: the encoder
    graph gives it, the step graph reads it, and the beams equal PyTorch's."""
    from showtell.checkpoint import save_checkpoint
    from showtell.config import ImageConfig, ModelConfig
    from showtell.data.vocab import Vocabulary
    from showtell.export import OnnxCaptioner
    from showtell.model import ShowAndTell

    torch.manual_seed(0)
    words = ["<S>", "</S>", "a", "b", "c", "d"]
    (tmp_path / "word_counts.txt").write_text(
        "".join(f"{w} {9 - i}\n" for i, w in enumerate(words))
    )
    vocab = Vocabulary.load(tmp_path / "word_counts.txt")
    config = ModelConfig(
        encoder="timm/test_efficientnet",
        vocab_size=8,
        embedding_size=16,
        num_lstm_units=16,
        initializer_scale=0.5,  # attention that matters to the words
        attention_grid=2,
        image=ImageConfig(resize_height=64, resize_width=64, height=64, width=64),
    )
    save_checkpoint(tmp_path / "train", 1, ShowAndTell(config).eval(), config, vocab, {}, {}, 1)
    out = tmp_path / "onnx"
    assert main(["export", f"--checkpoint_path={tmp_path / 'train'}", f"--output={out}"]) == 0
    assert json.loads((out / "export.json").read_text())["state"] == ["h", "c", "memory"]

    images = torch.rand(5, 3, 64, 64) * 2 - 1
    onnx_captioner = OnnxCaptioner(out)
    memory = onnx_captioner.encoder.run(None, {"images": images.numpy()})[2]
    assert memory.shape == (5, 4, 16)
    _assert_same_captions(onnx_captioner, Captioner(tmp_path / "train"), images)
