"""Device selection and torchrun data parallelism (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    launched: bool = False  # by torchrun: a process group exists, also for a world of one

    @property
    def enabled(self) -> bool:
        return self.launched or self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(name: str, local_rank: int = 0, key: str = "training.*.device") -> torch.device:
    """key: the setting that named the device, for the error message."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"{key}=cuda but no CUDA device is visible; use {key}=auto or cpu")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"{key}=mps but MPS is not available; use {key}=auto or cpu")
    return torch.device(name)


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Reads torchrun's environment; a plain `python` launch is a world of one without a process group.
    `torchrun --nproc-per-node 1` does get one (and DDP): one GPU runs the multi-GPU code path, nccl included."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return DistInfo(), select_device(device_name)
    world = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("torchrun: rank %d of %d on %s, process group on %s", rank, world, device, dist.get_backend())
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, launched=True), device


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision for everyone (stop / early stop), so no rank is left waiting."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return value
    v = value.detach().clone().float()
    dist.all_reduce(v)
    return v / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on GPU; full precision elsewhere (CPU autocast is slower than fp32 here)."""
    if device.type == "cuda" and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, skip_sync: bool) -> Iterator[None]:
    """Gradient accumulation under DDP: all-reduce only on the last micro-batch."""
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
