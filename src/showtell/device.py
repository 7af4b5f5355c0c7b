"""Where and in what precision the model runs: device choice, bfloat16 autocast, and the
process group of a `torchrun` launch. Library code: training, inference, evaluation,
export and serving all take their device from here, none from the trainer.

Devices (`--device`): `auto` is cuda > mps > cpu. Under torchrun (WORLD_SIZE > 1) every
process takes the GPU of its LOCAL_RANK: `auto` and `cuda` both mean `cuda:LOCAL_RANK`.
`cuda:N` names one GPU, which a many-process run cannot share out, so there it is an
error (choose the GPUs with CUDA_VISIBLE_DEVICES instead); in one process it is that GPU.

Precision (`train --precision`): `fp32` computes in float32 everywhere; `bf16` autocasts
to bfloat16 on CUDA and on the CPU (weights and optimizer state stay float32); `auto`
(the default) is bf16 on CUDA, and float32 on the CPU unless `--cpu_bf16` is set and the
CPU has bfloat16 instructions (AVX512-BF16 or AMX; elsewhere bfloat16 is emulated and
slower). `--cpu_bf16` is read by `auto` only: an explicit `--precision` decides alone.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from showtell.config import PRECISIONS
from showtell.errors import ShowtellError
from showtell.logs import quiet_other_ranks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Process:
    """This process's place in a (perhaps one-process) run."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(spec: str = "auto", local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device `spec` names for the process of `local_rank` in a run of `world_size`
    processes (see the module's docstring); one line for a device this machine lacks."""
    if spec == "auto":
        if torch.cuda.is_available():
            return _cuda(local_rank, spec)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise ShowtellError(f"--device {spec}: not a device (auto, cpu, cuda, cuda:N, mps)") from e
    if device.type == "cuda":
        if device.index is None:
            return _cuda(local_rank, spec)
        if world_size > 1:
            raise ShowtellError(
                f"--device {spec}: under torchrun each of the {world_size} processes takes the "
                "GPU of its LOCAL_RANK; give --device cuda (or auto) and choose the GPUs with "
                "CUDA_VISIBLE_DEVICES"
            )
        return _cuda(device.index, spec)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ShowtellError(f"--device {spec}: MPS is not available on this machine")
    return device


def _cuda(index: int, spec: str) -> torch.device:
    if not torch.cuda.is_available():
        raise ShowtellError(f"--device {spec}: CUDA is not available on this machine")
    count = torch.cuda.device_count()
    if index >= count:
        raise ShowtellError(f"--device {spec}: GPU {index} asked, {count} visible")
    return torch.device("cuda", index)


def setup_process(device_spec: str, environ: Mapping[str, str] = os.environ) -> Process:
    """One process, or a DDP process group when launched by torchrun (WORLD_SIZE > 1):
    NCCL on GPUs (each process pinned to its own), gloo on CPUs. Only rank 0 logs
    progress (the others their warnings and errors)."""
    world_size = int(environ.get("WORLD_SIZE", "1"))
    local_rank = int(environ.get("LOCAL_RANK", "0"))
    device = select_device(device_spec, local_rank, world_size)
    if world_size == 1:
        return Process(0, 1, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Rank 0 may spend a long time building the feature cache while the others wait.
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=4)
    )
    rank = int(environ["RANK"])
    quiet_other_ranks(rank)
    return Process(rank, world_size, device)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (where bfloat16 beats float32 on it;
    elsewhere it is emulated and slower). PyTorch's check is private: absent, False."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def compute_dtype(
    device: torch.device,
    precision: str = "auto",
    cpu_bf16: bool = False,
    say: Callable[[str], None] | None = None,
) -> torch.dtype:
    """float32 or bfloat16, as `precision` decides on `device` (the module's docstring);
    says once why a wish for bfloat16 is not or only slowly granted (to `say`, else to
    the log)."""

    def note(message: str, level: int = logging.INFO) -> None:
        if say is None:
            logger.log(level, message)
        else:
            say(f"warning: {message}" if level >= logging.WARNING else message)

    if precision not in PRECISIONS:
        raise ShowtellError(f"--precision {precision}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        if device.type not in ("cpu", "cuda"):
            raise ShowtellError(f"--precision bf16: on cpu and cuda only, not {device.type}")
        if device.type == "cpu" and not cpu_has_bf16():
            note(
                "--precision bf16: this CPU has no bfloat16 instructions (emulated, slow)",
                logging.WARNING,
            )
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "cpu" and cpu_bf16:
        if cpu_has_bf16():
            return torch.bfloat16
        note("cpu_bf16: this CPU has no bfloat16 instructions; training in float32")
    return torch.float32


def precision_context(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """A reusable context that computes in `dtype` on `device` (nothing for float32).
    bfloat16 on a CPU without bfloat16 instructions leaves oneDNN out: it has no
    bfloat16 LSTM there, and PyTorch's own kernels run the same autocast path."""
    if dtype == torch.float32:
        return nullcontext()
    if device.type == "cpu" and not cpu_has_bf16():
        return _Stack(
            lambda: torch.autocast("cpu", dtype=dtype),
            lambda: torch.backends.mkldnn.flags(enabled=False),
        )
    return torch.autocast(device.type, dtype=dtype)


class _Stack:
    """Several contexts entered as one, each made afresh at every `with`."""

    def __init__(self, *makers: Callable[[], AbstractContextManager]) -> None:
        self.makers, self.stacks = makers, []

    def __enter__(self) -> None:
        stack = ExitStack()
        for make in self.makers:
            stack.enter_context(make())
        self.stacks.append(stack)

    def __exit__(self, *exc: object) -> bool | None:
        return self.stacks.pop().__exit__(*exc)
