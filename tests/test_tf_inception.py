"""TF-slim InceptionV3 checkpoints (im2txt's `inception_v3.ckpt`) as the encoder's
weights, checked against TensorFlow itself: TF-slim's network with random weights,
saved by TensorFlow in both checkpoint formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from showtell.encoder_weights import load_pretrained
from showtell.encoders import build_encoder
from showtell.errors import ShowtellError
from showtell.tf_import import reader
from showtell.tf_import.inception import read_tf_slim_encoder
from tf_reference import im2txt_reference

pytestmark = pytest.mark.slow

# 75x75 is Inception's smallest input: the 3x3 SAME average pools then run on 7x7, 3x3
# and 1x1 maps, where most cells touch the padding.
SIZE = 75


@pytest.fixture(scope="module")
def tf_inception(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, ...]:
    """TF-slim's InceptionV3 (random weights), saved by TensorFlow as TF-slim's own
    checkpoints in both formats, and its features of two images."""
    reference = im2txt_reference()
    images = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    tmp = tmp_path_factory.mktemp("inception")
    paths = {v: reference.save(tmp / f"inception_v{v}.ckpt", era="", version=v) for v in (1, 2)}
    return images, reference.image_features(images), paths


def _features(encoder: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(torch.from_numpy(images).permute(0, 3, 1, 2))


def test_encoder_from_tf_slim_checkpoint_computes_what_tensorflow_does(tf_inception):
    images, expected, paths = tf_inception
    assert 0.1 < np.abs(expected).max() < 100  # the comparison is at a meaningful scale
    encoder = build_encoder("inception_v3")
    for version in (1, 2):
        assert load_pretrained(encoder, str(paths[version])) == str(paths[version])
        torch.testing.assert_close(
            _features(encoder, images), torch.from_numpy(expected), atol=1e-4, rtol=1e-4
        )
    # Counting padded cells in the average pools (torchvision's way) is far off: the
    # comparison above sees the pooling.
    for module in encoder.modules():
        module._forward_pre_hooks.clear()
    assert (_features(encoder, images) - torch.from_numpy(expected)).abs().max() > 1e-2


def test_v2_reader_without_tensorflow_reads_what_tensorflow_reads(tf_inception, monkeypatch):
    _, _, paths = tf_inception
    checkpoint = reader.find_tf_checkpoint(paths[2])
    assert checkpoint is not None and checkpoint.version == 2
    by_tensorflow = reader.read_variables(checkpoint)
    monkeypatch.setattr(reader, "tensorflow_available", lambda: False)
    ours = reader.read_variables(checkpoint)
    assert ours.keys() == by_tensorflow.keys() and len(ours) == 377  # 376 + global_step
    for name, value in by_tensorflow.items():
        assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
    assert int(ours["global_step"]) == 5000
    # The .index and .data files, and a train dir's `checkpoint` file, name it too.
    for alias in (f"{paths[2]}.index", f"{paths[2]}.data-00000-of-00001", paths[2].parent):
        assert reader.find_tf_checkpoint(alias) == checkpoint
    # V1 needs TensorFlow: one line naming the file and the extra.
    v1 = reader.find_tf_checkpoint(paths[1])
    assert v1 is not None and v1.version == 1
    with pytest.raises(ShowtellError, match=r"inception_v1\.ckpt: .*showtell\[tf\]"):
        reader.read_variables(v1)


def test_damaged_or_foreign_checkpoints_fail_in_one_line(tf_inception, tmp_path, monkeypatch):
    _, _, paths = tf_inception
    monkeypatch.setattr(reader, "tensorflow_available", lambda: False)
    prefix = tmp_path / "model.ckpt-1"
    index = Path(f"{paths[2]}.index").read_bytes()
    data = Path(f"{paths[2]}.data-00000-of-00001").read_bytes()
    Path(f"{prefix}.index").write_bytes(index)
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data[:-1000])
    with pytest.raises(ShowtellError, match=r"truncated|CRC32C"):
        read_tf_slim_encoder(prefix)
    flipped = bytearray(index)
    flipped[100] ^= 0xFF
    Path(f"{prefix}.index").write_bytes(bytes(flipped))
    with pytest.raises(ShowtellError, match=r"model\.ckpt-1\.index: .*CRC32C"):
        read_tf_slim_encoder(prefix)
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/model.ckpt-9"\n')
    with pytest.raises(ShowtellError, match=r"names model\.ckpt-9, which is not in"):
        read_tf_slim_encoder(tmp_path)
