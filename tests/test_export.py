"""ONNX export: captions from ONNX Runtime equal the PyTorch ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from showtell.cli import main
from showtell.data.preprocess import ImagePreprocessor
from showtell.data.records import read_caption_records
from showtell.inference import Captioner

pytest.importorskip("onnxruntime")


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
    expected = torch_captioner.caption_images(images)
    got = onnx_captioner.caption_images(images)
    for want, have in zip(expected, got, strict=True):
        assert [c.tokens for c in have] == [c.tokens for c in want]
        for a, b in zip(have, want, strict=True):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
