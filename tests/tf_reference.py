"""Independent references built in TensorFlow itself, for the tests of
`showtell.tf_import`: TF-slim's InceptionV3 and im2txt's inference graph.

tf_slim 1.1.0 (its last release) predates TensorFlow 2.20, which removed the alias
`tensorflow.python.framework.ops.Tensor` that tf_slim still uses; `tf_slim_modules`
restores that one alias (to `tf.Tensor`, what it always named) before importing
tf_slim. Its batch-norm is built through tf_slim's own implementation
(`updates_collections=None`), not the Keras layer whose module moved out of
TensorFlow; in inference mode both compute (x - mean) / sqrt(var + eps) + beta.
The LSTM is TensorFlow's own BasicLSTMCell (`tf.compat.v1.nn.rnn_cell`), as im2txt
built it.
"""

from __future__ import annotations

import functools
import heapq
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# tf.compat.v1.nn.rnn_cell.BasicLSTMCell (im2txt's cell) exists with Keras 2 only: the
# tf-keras package, which TensorFlow uses when this is set before it is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def tensorflow() -> Any:
    """TensorFlow in graph mode (skips the test where the TF extra is not installed)."""
    tf = pytest.importorskip("tensorflow", reason="needs the TF extra: pip install 'showtell[tf]'")
    tf.compat.v1.disable_eager_execution()
    return tf


def tf_slim_modules() -> tuple[Any, Any]:
    """(tf_slim, tf_slim.nets.inception_v3), importable with current TensorFlow."""
    tf = tensorflow()
    from tensorflow.python.framework import ops

    if not hasattr(ops, "Tensor"):
        ops.Tensor = tf.Tensor
    slim = pytest.importorskip("tf_slim")
    from tf_slim.nets import inception_v3

    return slim, inception_v3


def inception_v3_features(images: Any) -> Any:
    """TF-slim's inception_v3_base in inference mode, pooled to (B, 2048): im2txt's
    image_embedding.py took avg_pool2d over the whole map (VALID), the mean over it,
    which reduce_mean computes for inputs of any size. Batch-norm
    statistics and offsets start random too (TF's defaults are 0 and 1), so that a wrong
    mean, variance or beta mapping shows."""
    tf = tensorflow()
    slim, inception_v3 = tf_slim_modules()
    random_bn = {
        "beta": tf.compat.v1.random_normal_initializer(0.0, 0.2),
        "moving_mean": tf.compat.v1.random_normal_initializer(0.0, 0.2),
        "moving_variance": tf.compat.v1.random_uniform_initializer(0.5, 1.5),
    }
    scope = inception_v3.inception_v3_arg_scope(updates_collections=None)
    batch_norm = slim.arg_scope([slim.batch_norm], is_training=False, param_initializers=random_bn)
    with slim.arg_scope(scope), batch_norm:
        net, _ = inception_v3.inception_v3_base(images)
    return tf.reduce_mean(net, [1, 2])


# The LSTM variables' names in each TensorFlow era (what im2txt's checkpoints hold).
LSTM_ERA_NAMES = {
    "TF <= 0.12": ("lstm/BasicLSTMCell/Linear/Matrix", "lstm/BasicLSTMCell/Linear/Bias"),
    "TF 1.0-1.1": ("lstm/basic_lstm_cell/weights", "lstm/basic_lstm_cell/biases"),
    "TF >= 1.2": ("lstm/basic_lstm_cell/kernel", "lstm/basic_lstm_cell/bias"),
}


DECODER = ("image_embedding/", "seq_embedding/", "lstm/", "logits/")


@functools.cache
def im2txt_reference() -> Im2txtReference:
    """One reference for all tests (building TF-slim's InceptionV3 takes seconds):
    vocab_size 12,000 and 512 units, as the real im2txt model. Logit biases boosted for
    the end word of the real vocabulary (id 2), so that captions end now and then, and
    for one id past its 11,519 words (it prints as <UNK>)."""
    return Im2txtReference(vocab_size=12000, bias_boost={2: 2.0, 11_619: 1.0})


class Im2txtReference:
    """im2txt's inference graph (`show_and_tell_model.py` in inference mode) in
    TensorFlow: TF-slim InceptionV3 -> pooled -> image_embedding (no bias) -> the
    BasicLSTMCell's step from the zero state; then per word: seq_embedding lookup ->
    the cell -> logits -> softmax. Random weights; `save` writes it as im2txt's
    checkpoints with the LSTM named as in any TensorFlow era."""

    def __init__(
        self,
        vocab_size: int,
        bias_boost: dict[int, float],
        units: int = 512,
        seed: int = 0,
    ) -> None:
        """`bias_boost`: added to some words' logit biases (the end word, so that
        captions end now and then)."""
        tf = self.tf = tensorflow()
        slim, _ = tf_slim_modules()
        rng = np.random.default_rng(seed)
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.compat.v1.set_random_seed(seed)
            self.images = tf.compat.v1.placeholder(tf.float32, (None, None, None, 3))
            self.features = inception_v3_features(self.images)  # (B, 2048)
            self.feed_features = tf.compat.v1.placeholder_with_default(self.features, (None, 2048))

            def uniform(scale: float) -> Any:
                return tf.compat.v1.random_uniform_initializer(-scale, scale)

            with tf.compat.v1.variable_scope("image_embedding") as scope:
                image_embeddings = slim.fully_connected(
                    self.feed_features,
                    units,
                    activation_fn=None,
                    scope=scope,
                    weights_initializer=uniform(0.05),
                    biases_initializer=None,
                )
            with tf.compat.v1.variable_scope("seq_embedding"):
                embedding_map = tf.compat.v1.get_variable(
                    "map", (vocab_size, units), initializer=uniform(0.5)
                )
            cell = tf.compat.v1.nn.rnn_cell.BasicLSTMCell(units, state_is_tuple=True)
            with tf.compat.v1.variable_scope("lstm", initializer=uniform(0.3)) as lstm_scope:
                zero = cell.zero_state(tf.shape(image_embeddings)[0], tf.float32)
                _, initial = cell(image_embeddings, zero)
                self.initial_c, self.initial_h = initial
                lstm_scope.reuse_variables()
                self.tokens = tf.compat.v1.placeholder(tf.int64, (None,))
                self.c = tf.compat.v1.placeholder(tf.float32, (None, units))
                self.h = tf.compat.v1.placeholder(tf.float32, (None, units))
                words = tf.nn.embedding_lookup(embedding_map, self.tokens)
                output, (self.new_c, self.new_h) = cell(
                    words, tf.compat.v1.nn.rnn_cell.LSTMStateTuple(self.c, self.h)
                )
            biases = rng.uniform(-0.5, 0.5, vocab_size).astype(np.float32)
            for word, boost in bias_boost.items():
                biases[word] += boost
            with tf.compat.v1.variable_scope("logits") as scope:
                logits = slim.fully_connected(
                    output,
                    vocab_size,
                    activation_fn=None,
                    scope=scope,
                    weights_initializer=uniform(0.15),
                    biases_initializer=tf.compat.v1.constant_initializer(biases),
                )
            self.softmax = tf.nn.softmax(logits)
            self.log_softmax = tf.nn.log_softmax(logits)
            self.global_step = tf.compat.v1.train.get_or_create_global_step()
            self.session = tf.compat.v1.Session(graph=self.graph)
            self.session.run(tf.compat.v1.global_variables_initializer())
            self.session.run(self.global_step.assign(5000))

    def image_features(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(self.features, {self.images: images})

    def initial_state(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(c, h) after the image step."""
        return self.session.run((self.initial_c, self.initial_h), {self.feed_features: features})

    def step(
        self, tokens: np.ndarray, c: np.ndarray, h: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """im2txt's inference step: (softmax, log-softmax, new c, new h)."""
        return self.session.run(
            (self.softmax, self.log_softmax, self.new_c, self.new_h),
            {self.tokens: tokens, self.c: c, self.h: h},
        )

    def save(self, prefix: Path, era: str = "TF >= 1.2", version: int = 2) -> Path:
        """Writes every variable as im2txt's checkpoint, the LSTM's named as `era`'s
        TensorFlow named them; `era=""`: TF-slim's InceptionV3 alone (and global_step),
        as TF-slim's own checkpoints."""
        tf = self.tf
        with self.graph.as_default():
            variables = tf.compat.v1.global_variables()
            if not era:
                variables = [v for v in variables if not v.op.name.startswith(DECODER)]
                era = "TF >= 1.2"
            names = dict(zip(LSTM_ERA_NAMES["TF >= 1.2"], LSTM_ERA_NAMES[era], strict=True))
            var_list = {names.get(v.op.name, v.op.name): v for v in variables}
            saver_def = tf.compat.v1.train.SaverDef
            saver = tf.compat.v1.train.Saver(
                var_list, write_version=saver_def.V1 if version == 1 else saver_def.V2
            )
            return Path(saver.save(self.session, str(prefix), write_meta_graph=False))


class TopN:
    """im2txt's TopN (`inference_utils/caption_generator.py`): the n best by score."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.data: list[tuple[float, int, Any]] = []
        self.counter = 0

    def push(self, score: float, item: Any) -> None:
        self.counter += 1
        entry = (score, self.counter, item)
        if len(self.data) < self.n:
            heapq.heappush(self.data, entry)
        else:
            heapq.heappushpop(self.data, entry)

    def extract(self, sort: bool = False) -> list[Any]:
        data = sorted(self.data, reverse=True) if sort else list(self.data)
        self.data = []
        return [item for _, _, item in data]


def reference_beam_search(
    reference: Im2txtReference,
    state: tuple[np.ndarray, np.ndarray],
    start_id: int,
    end_id: int,
    beam_size: int = 3,
    max_caption_length: int = 20,
) -> list[tuple[list[int], float]]:
    """im2txt's CaptionGenerator.beam_search for one image (its top-k as intended),
    over the TensorFlow reference's step: [(word ids from the start word, logprob)]."""
    c, h = state
    partial, complete = TopN(beam_size), TopN(beam_size)
    partial.push(0.0, ([start_id], c, h, 0.0))
    for _ in range(max_caption_length - 1):
        captions = partial.extract()
        tokens = np.array([sentence[-1] for sentence, *_ in captions])
        softmax, _, new_c, new_h = reference.step(
            tokens, np.stack([x[1] for x in captions]), np.stack([x[2] for x in captions])
        )
        for i, (sentence, _, _, logprob) in enumerate(captions):
            best = np.argsort(-softmax[i], kind="stable")[:beam_size]
            for word in best:
                p = float(softmax[i][word])
                if p < 1e-12:
                    continue
                caption = ([*sentence, int(word)], new_c[i], new_h[i], logprob + math.log(p))
                (complete if word == end_id else partial).push(caption[3], caption)
        if not partial.data:
            break
    best = complete.extract(sort=True) if complete.data else partial.extract(sort=True)
    return [(sentence, logprob) for sentence, _, _, logprob in best]


def im2txt_process_image(jpeg: bytes) -> np.ndarray:
    """im2txt's `process_image` for inference in TF1 ops: decode_jpeg (3 channels) ->
    [0, 1] -> resize_images (bilinear, TF1's: no half-pixel centres) to 346x346 ->
    central 299x299 crop -> (x - 0.5) * 2; (299, 299, 3)."""
    tf = tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        data = tf.compat.v1.placeholder(tf.string, ())
        image = tf.image.convert_image_dtype(tf.io.decode_jpeg(data, channels=3), tf.float32)
        image = tf.compat.v1.image.resize_bilinear(
            image[None], [346, 346], align_corners=False, half_pixel_centers=False
        )[0]
        image = (tf.image.resize_with_crop_or_pad(image, 299, 299) - 0.5) * 2.0
        with tf.compat.v1.Session(graph=graph) as session:
            return session.run(image, {data: jpeg})
