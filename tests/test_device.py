"""Device, precision and process-group set-up (showtell.device), without a GPU: CUDA's
presence and torch.distributed are stood in for, and what the set-up asks of them is
compared with what torchrun's environment means (each process on its LOCAL_RANK's GPU)."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import pytest
import torch

from showtell import device as devices
from showtell.device import compute_dtype, precision_context, select_device, setup_process
from showtell.errors import ShowtellError


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """A machine with 4 visible GPUs; records set_device and init_process_group calls."""
    calls: dict[str, list] = {"set_device": [], "init_process_group": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    # As the real set_device: a device without an index is a ValueError.
    index = torch.cuda._utils._get_device_index
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(index(d)))
    monkeypatch.setattr(
        devices.dist,
        "init_process_group",
        lambda backend, **kw: calls["init_process_group"].append(backend),
    )
    return calls


def torchrun(rank: int, world_size: int = 2) -> dict[str, str]:
    """The environment torchrun gives process `rank` on one node."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)}


@pytest.mark.parametrize("spec", ["cuda", "auto"])
def test_under_torchrun_cuda_means_the_gpu_of_local_rank(four_gpus, spec: str) -> None:
    for rank in (0, 1):
        process = setup_process(spec, torchrun(rank))
        assert process.device == torch.device("cuda", rank)
        assert (process.rank, process.world_size, process.is_main) == (rank, 2, rank == 0)
    assert four_gpus["set_device"] == [0, 1]
    assert four_gpus["init_process_group"] == ["nccl", "nccl"]


def test_under_torchrun_one_named_gpu_is_an_error_not_every_rank_on_it(four_gpus) -> None:
    with pytest.raises(ShowtellError, match=r"^--device cuda:1: under torchrun .* 2 processes"):
        setup_process("cuda:1", torchrun(0))
    assert four_gpus["set_device"] == [] and four_gpus["init_process_group"] == []


def test_one_process_takes_the_gpu_it_is_given(four_gpus) -> None:
    assert setup_process("cuda:3", {}).device == torch.device("cuda", 3)
    assert setup_process("cuda", {}).device == torch.device("cuda", 0)
    assert setup_process("cpu", {}).device == torch.device("cpu")
    assert four_gpus["set_device"] == [] and four_gpus["init_process_group"] == []
    with pytest.raises(ShowtellError, match=r"^--device cuda:4: GPU 4 asked, 4 visible$"):
        select_device("cuda:4")


def test_cpu_processes_under_torchrun_use_gloo(four_gpus) -> None:
    process = setup_process("cpu", torchrun(1, world_size=3))
    assert process.device == torch.device("cpu") and process.rank == 1
    assert four_gpus["init_process_group"] == ["gloo"] and four_gpus["set_device"] == []


def test_a_device_this_machine_lacks_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ShowtellError, match=r"^--device cuda: CUDA is not available"):
        select_device("cuda")
    with pytest.raises(ShowtellError, match=r"^--device gpu: not a device"):
        select_device("gpu")


CUDA, CPU, MPS = torch.device("cuda", 0), torch.device("cpu"), torch.device("mps")
F32, BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize("has_bf16", [False, True])
def test_precision_decides_the_arithmetic(monkeypatch: pytest.MonkeyPatch, has_bf16: bool) -> None:
    """auto: bf16 on CUDA, on the CPU only with --cpu_bf16 and bfloat16 instructions;
    fp32 and bf16 decide alone, whatever --cpu_bf16 says."""
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: has_bf16)
    said: list[str] = []
    cases = {
        (CUDA, "auto", False): BF16,
        (CUDA, "fp32", False): F32,
        (CUDA, "bf16", False): BF16,
        (CPU, "auto", False): F32,
        (CPU, "auto", True): BF16 if has_bf16 else F32,
        (CPU, "fp32", True): F32,
        (CPU, "bf16", False): BF16,
        (MPS, "auto", True): F32,
    }
    for (device, precision, cpu_bf16), expected in cases.items():
        got = compute_dtype(device, precision, cpu_bf16, said.append)
        assert got == expected, (device, precision, cpu_bf16)
    if has_bf16:
        assert said == []
    else:  # once for auto + cpu_bf16, once for an explicit bf16
        assert said == [
            "cpu_bf16: this CPU has no bfloat16 instructions; training in float32",
            "warning: --precision bf16: this CPU has no bfloat16 instructions (emulated, slow)",
        ]
    with pytest.raises(ShowtellError, match=r"^--precision fp16: use one of auto, fp32, bf16$"):
        compute_dtype(CPU, "fp16")
    with pytest.raises(ShowtellError, match=r"^--precision bf16: on cpu and cuda only, not mps$"):
        compute_dtype(MPS, "bf16")


def test_precision_context_autocasts_only_for_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(precision_context(CUDA, F32), nullcontext)
    with warnings.catch_warnings():  # "CUDA is not available": this test needs none
        warnings.simplefilter("ignore")
        assert isinstance(precision_context(CUDA, BF16), torch.autocast)
    layer = torch.nn.Linear(4, 4)
    for has_bf16 in (False, True):  # without the instructions, oneDNN is left out
        monkeypatch.setattr(devices, "cpu_has_bf16", lambda has=has_bf16: has)
        context = precision_context(CPU, BF16)
        for _ in range(2):  # reusable: the training loop enters it at every step
            with context:
                assert layer(torch.ones(2, 4)).dtype == BF16
                assert torch.backends.mkldnn.enabled is has_bf16
            assert torch.backends.mkldnn.enabled
    with precision_context(CPU, F32):
        assert layer(torch.ones(2, 4)).dtype == F32
