"""im2txt's preprocessing (`ImageConfig.resize_method="tf1"`) against TensorFlow's own
ops, as im2txt's `ops/image_processing.py` ran them for evaluation and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from showtell.config import ImageConfig
from showtell.data.preprocess import ImagePreprocessor, resize_bilinear_tf1
from showtell.errors import ShowtellError


def _tf_process_image(image: np.ndarray, resize: int, crop: int) -> np.ndarray:
    """im2txt's process_image (is_training=False) on an HWC uint8 image, in TF1 ops."""
    from tf_reference import tensorflow

    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.uint8, (None, None, 3))
        y = tf.image.convert_image_dtype(x, dtype=tf.float32)
        y = tf.compat.v1.image.resize_bilinear(
            y[None], [resize, resize], align_corners=False, half_pixel_centers=False
        )[0]
        y = tf.image.resize_with_crop_or_pad(y, crop, crop)
        y = (y - 0.5) * 2.0
        with tf.compat.v1.Session(graph=graph) as session:
            return session.run(y, {x: image})


@pytest.mark.parametrize("shape", [(37, 53), (480, 640), (346, 346)])
def test_tf1_preprocessing_equals_im2txts(shape):
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = _tf_process_image(image, 346, 299)  # (299, 299, 3)
    config = ImageConfig(resize_method="tf1")
    ours = ImagePreprocessor(config, training=False).from_uint8(
        torch.from_numpy(image).permute(2, 0, 1)
    )
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), expected, atol=2e-6, rtol=0)
    # torchvision's resize (pixel centres aligned) is another image: the option matters.
    other = ImagePreprocessor(ImageConfig(), training=False).from_uint8(
        torch.from_numpy(image).permute(2, 0, 1)
    )
    if shape != (346, 346):  # (at 346x346 both resizes are the identity)
        assert np.abs(other.permute(1, 2, 0).numpy() - expected).max() > 1e-2


def test_resize_bilinear_tf1_upsamples_as_tensorflow():
    image = np.random.default_rng(0).random((3, 5, 7), dtype=np.float32)
    from tf_reference import tensorflow

    tf = tensorflow()
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        expected = session.run(
            tf.compat.v1.image.resize_bilinear(
                np.moveaxis(image, 0, -1)[None], [11, 16], half_pixel_centers=False
            )
        )[0]
    ours = resize_bilinear_tf1(torch.from_numpy(image), 11, 16)
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), expected, atol=1e-6, rtol=0)


def test_unknown_resize_method_is_refused():
    with pytest.raises(ShowtellError, match="resize_method 'tf2'"):
        ImageConfig(resize_method="tf2")
