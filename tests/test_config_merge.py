"""config.merge.resolve, the one merge of presets and flags, and the model configuration
as a typed ModelRequest (model.model_request)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from showtell.config import (
    STAGE_POOLINGS,
    ImageConfig,
    ModelConfig,
    TrainConfig,
    load_preset,
    model_config_from_dict,
    to_dict,
)
from showtell.config.merge import FLAGS, Source, resolve
from showtell.encoders import STAGE_POOLS
from showtell.errors import ShowtellError
from showtell.model import ShowAndTell, model_request


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ({"trian": {}}, "unknown sections ['trian']"),
        ({"train": {"batch_sise": 3}}, "unknown TrainConfig field 'batch_sise' (train.batch_sise)"),
        (
            {"model": {"image": {"heigth": 3}}},
            "unknown ImageConfig field 'heigth' (model.image.heigth)",
        ),
    ],
)
def test_unknown_key_at_any_depth_is_one_line_naming_file_and_key(
    tmp_path: Path, preset: dict, message: str
) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    with pytest.raises(ShowtellError) as caught:
        data = load_preset(str(path))
        for section, cls in (("train", TrainConfig), ("model", ModelConfig)):
            resolve(cls, (Source(str(path), section), data.get(section, {})))
    text = str(caught.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_values_take_their_fields_types() -> None:
    """JSON's lists become the declared tuples and its ints floats, once, in the merge
    (they were patched in several places before: a list never equalled a tuple)."""
    image = resolve(
        ImageConfig, (Source("a.json", "image"), {"saturation_range": [1, 2], "hue_max_delta": 0})
    )
    assert image.saturation_range == (1.0, 2.0) and isinstance(image.saturation_range, tuple)
    assert isinstance(image.hue_max_delta, float)
    with pytest.raises(ShowtellError, match=r"^a.json: image.random_flip: expected true or false"):
        resolve(ImageConfig, (Source("a.json", "image"), {"random_flip": "no"}))


def test_checkpoints_written_before_stage_pooling_keep_pooling_by_the_mean() -> None:
    """A checkpoint's config.json from before `stage_pooling` existed was trained on
    mean-pooled stages; new ones record their choice (max by default)."""
    new = to_dict(
        ModelConfig(encoder="timm/test_efficientnet", vocab_size=8, multiscale_features=True)
    )
    old = {k: v for k, v in new.items() if k != "stage_pooling"}
    for saved, pooling in ((old, "mean"), (new, "max")):
        config = model_config_from_dict(saved)
        assert config.stage_pooling == pooling
        assert ShowAndTell(config).encoder.stage_pooling == pooling  # what the model pools by
    for stage_pooling in STAGE_POOLINGS:  # every accepted name has a pooling
        assert stage_pooling in STAGE_POOLS
    with pytest.raises(ShowtellError, match=r"^--stage_pooling median: use one of max, mean$"):
        ModelConfig(stage_pooling="median")


def test_layers_merge_key_by_key_the_last_winning() -> None:
    preset = (Source("p.json", "train"), {"batch_size": 8, "seed": 3})
    config = resolve(TrainConfig, preset, (FLAGS, {"batch_size": 16}))
    assert (config.batch_size, config.seed, config.optimizer) == (16, 3, TrainConfig().optimizer)


def test_model_request_fills_the_encoders_sizes_and_knows_what_was_given() -> None:
    request = model_request(
        (Source("p.json", "model"), {"encoder": "cnn_small", "image": {"random_flip": False}}),
        (FLAGS, {"num_lstm_units": 64}),
    )
    assert isinstance(request.config, ModelConfig)
    assert request.config.image.height == 64  # cnn_small's input, not Inception's 299
    assert request.given == {"encoder", "image.random_flip", "num_lstm_units"}
    saved = ModelConfig(encoder="cnn_small", num_lstm_units=32)
    assert request.differences(saved) == [
        "image.random_flip: checkpoint True, asked False",
        "num_lstm_units: checkpoint 32, asked 64",
    ]
