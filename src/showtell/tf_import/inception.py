"""TF-slim's InceptionV3 variables -> showtell's `inception_v3` encoder (torchvision's
Inception3 layout).

Every conv layer of TF-slim's `inception_v3_base` is `weights` [kh, kw, in, out] (no
bias) followed by batch-norm without scale (`BatchNorm/beta`, `moving_mean`,
`moving_variance`; gamma is 1; epsilon 0.001, which showtell's encoder already uses).
torchvision's BasicConv2d is the same conv + BatchNorm2d, so each TF layer maps to one
torchvision layer; the table below names every one of the 94, with TF-slim's quirks
(Mixed_5c's `Conv2d_0b_1x1`/`Conv_1_0c_5x5`, Mixed_6a's 3x3 convs named `..._1x1`,
Mixed_7b's `Conv2d_0b_3x1` vs Mixed_7c's `Conv2d_0c_3x1`). The classifier heads of
TF-slim's full `inception_v3` (`Logits`, `AuxLogits`) are not part of the encoder and
are skipped. The average pools compute as TF-slim's: see `showtell.encoders`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from showtell.errors import ShowtellError
from showtell.tf_import.reader import find_tf_checkpoint, read_variables

SCOPE = "InceptionV3"
# TF-slim's classifier heads: in TF-slim's checkpoints, never in the encoder.
CLASSIFIER_SCOPES = (f"{SCOPE}/Logits/", f"{SCOPE}/AuxLogits/")

_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
_A = {  # InceptionA: Mixed_5b, 5c, 5d (5c's second branch named differently)
    "branch1x1": "Branch_0/Conv2d_0a_1x1",
    "branch5x5_1": "Branch_1/Conv2d_0a_1x1",
    "branch5x5_2": "Branch_1/Conv2d_0b_5x5",
    "branch3x3dbl_1": "Branch_2/Conv2d_0a_1x1",
    "branch3x3dbl_2": "Branch_2/Conv2d_0b_3x3",
    "branch3x3dbl_3": "Branch_2/Conv2d_0c_3x3",
    "branch_pool": "Branch_3/Conv2d_0b_1x1",
}
_A_5C = {
    **_A,
    "branch5x5_1": "Branch_1/Conv2d_0b_1x1",
    "branch5x5_2": "Branch_1/Conv_1_0c_5x5",
}
_B = {  # InceptionB: Mixed_6a
    "branch3x3": "Branch_0/Conv2d_1a_1x1",
    "branch3x3dbl_1": "Branch_1/Conv2d_0a_1x1",
    "branch3x3dbl_2": "Branch_1/Conv2d_0b_3x3",
    "branch3x3dbl_3": "Branch_1/Conv2d_1a_1x1",
}
_C = {  # InceptionC: Mixed_6b .. 6e
    "branch1x1": "Branch_0/Conv2d_0a_1x1",
    "branch7x7_1": "Branch_1/Conv2d_0a_1x1",
    "branch7x7_2": "Branch_1/Conv2d_0b_1x7",
    "branch7x7_3": "Branch_1/Conv2d_0c_7x1",
    "branch7x7dbl_1": "Branch_2/Conv2d_0a_1x1",
    "branch7x7dbl_2": "Branch_2/Conv2d_0b_7x1",
    "branch7x7dbl_3": "Branch_2/Conv2d_0c_1x7",
    "branch7x7dbl_4": "Branch_2/Conv2d_0d_7x1",
    "branch7x7dbl_5": "Branch_2/Conv2d_0e_1x7",
    "branch_pool": "Branch_3/Conv2d_0b_1x1",
}
_D = {  # InceptionD: Mixed_7a
    "branch3x3_1": "Branch_0/Conv2d_0a_1x1",
    "branch3x3_2": "Branch_0/Conv2d_1a_3x3",
    "branch7x7x3_1": "Branch_1/Conv2d_0a_1x1",
    "branch7x7x3_2": "Branch_1/Conv2d_0b_1x7",
    "branch7x7x3_3": "Branch_1/Conv2d_0c_7x1",
    "branch7x7x3_4": "Branch_1/Conv2d_1a_3x3",
}
_E = {  # InceptionE: Mixed_7b, 7c (7c's 3x1 of the second branch named differently)
    "branch1x1": "Branch_0/Conv2d_0a_1x1",
    "branch3x3_1": "Branch_1/Conv2d_0a_1x1",
    "branch3x3_2a": "Branch_1/Conv2d_0b_1x3",
    "branch3x3_2b": "Branch_1/Conv2d_0b_3x1",
    "branch3x3dbl_1": "Branch_2/Conv2d_0a_1x1",
    "branch3x3dbl_2": "Branch_2/Conv2d_0b_3x3",
    "branch3x3dbl_3a": "Branch_2/Conv2d_0c_1x3",
    "branch3x3dbl_3b": "Branch_2/Conv2d_0d_3x1",
    "branch_pool": "Branch_3/Conv2d_0b_1x1",
}
_E_7C = {**_E, "branch3x3_2b": "Branch_1/Conv2d_0c_3x1"}
_BLOCKS = {
    "Mixed_5b": _A,
    "Mixed_5c": _A_5C,
    "Mixed_5d": _A,
    "Mixed_6a": _B,
    "Mixed_6b": _C,
    "Mixed_6c": _C,
    "Mixed_6d": _C,
    "Mixed_6e": _C,
    "Mixed_7a": _D,
    "Mixed_7b": _E,
    "Mixed_7c": _E_7C,
}


def conv_layers() -> dict[str, str]:
    """torchvision layer name (e.g. `Mixed_5c.branch5x5_2`) -> TF-slim scope under
    `InceptionV3/` (`Mixed_5c/Branch_1/Conv_1_0c_5x5`): all 94 conv layers."""
    layers = {name: name for name in _STEM}
    for block, branches in _BLOCKS.items():
        for torch_name, tf_name in branches.items():
            layers[f"{block}.{torch_name}"] = f"{block}/{tf_name}"
    return layers


def inception_state_dict(
    variables: dict[str, np.ndarray], source: str, scope: str = SCOPE
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """TF variables -> a torchvision Inception3 state dict (backbone keys, no `fc`).
    Returns it with the set of TF names used. Raises on a missing variable or a wrong
    shape; variables outside the encoder are the caller's to account for."""
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        full = f"{scope}/{name}"
        if full not in variables:
            raise ShowtellError(f"{source}: no variable {full}: not a TF-slim InceptionV3")
        used.add(full)
        return torch.from_numpy(np.array(variables[full], dtype=np.float32))

    for torch_name, tf_name in conv_layers().items():
        kernel = take(f"{tf_name}/weights")  # (kh, kw, in, out)
        if kernel.ndim != 4:
            raise ShowtellError(
                f"{source}: {scope}/{tf_name}/weights has shape {tuple(kernel.shape)}, "
                "expected [height, width, in, out]"
            )
        out_channels = kernel.shape[3]
        state[f"{torch_name}.conv.weight"] = kernel.permute(3, 2, 0, 1).contiguous()
        bn = f"{tf_name}/BatchNorm"
        for tf_key, torch_key in (
            ("beta", "bias"),
            ("moving_mean", "running_mean"),
            ("moving_variance", "running_var"),
        ):
            value = take(f"{bn}/{tf_key}")
            if tuple(value.shape) != (out_channels,):
                raise ShowtellError(
                    f"{source}: {scope}/{bn}/{tf_key} has shape {tuple(value.shape)}, "
                    f"expected ({out_channels},)"
                )
            state[f"{torch_name}.bn.{torch_key}"] = value
        gamma = f"{scope}/{bn}/gamma"  # TF-slim's InceptionV3 has none (scale=False)
        if gamma in variables:
            state[f"{torch_name}.bn.weight"] = take(f"{bn}/gamma")
        else:
            state[f"{torch_name}.bn.weight"] = torch.ones(out_channels)
        state[f"{torch_name}.bn.num_batches_tracked"] = torch.tensor(0)
    return state, used


def tf_slim_encoder_state(variables: dict[str, np.ndarray], source: str) -> dict[str, torch.Tensor]:
    """A TF-slim InceptionV3 checkpoint (classifier or `inception_v3_base`) -> the
    encoder's backbone state dict. Every variable must be used: the encoder's, the
    classifier heads (skipped) and `global_step`; any other is an error, since a
    checkpoint of another network must not half-load."""
    state, used = inception_state_dict(variables, source)
    left = sorted(
        name
        for name in variables
        if name not in used and name != "global_step" and not name.startswith(CLASSIFIER_SCOPES)
    )
    if left:
        raise ShowtellError(
            f"{source}: {len(left)} variables are not TF-slim InceptionV3's "
            f"(e.g. {', '.join(left[:3])})"
        )
    return state


def read_tf_slim_encoder(path: str | Path) -> dict[str, torch.Tensor] | None:
    """The encoder state of the TensorFlow checkpoint at `path` (a V1 file such as
    TF-slim's `inception_v3.ckpt`, a V2 prefix, or a train dir), or None when `path`
    is not a TensorFlow checkpoint."""
    checkpoint = find_tf_checkpoint(path)
    if checkpoint is None:
        return None
    return tf_slim_encoder_state(read_variables(checkpoint), str(checkpoint))
