"""torchrun's environment -> process group and DistInfo (in-process, gloo on CPU)."""

import socket

import torch
import torch.distributed as dist

from harmonica.training.distributed import DistInfo, all_mean, init_distributed, shutdown_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_plain_launch_has_no_process_group(monkeypatch):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info, device = init_distributed("cpu")
    assert info == DistInfo() and not info.enabled and device.type == "cpu"
    assert not dist.is_initialized()


def test_torchrun_with_one_process_gets_a_process_group(monkeypatch):
    """`torchrun --nproc-per-node 1` on one GPU runs the multi-GPU path (nccl, DDP), not the plain one."""
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    try:
        info, device = init_distributed("cpu")
        assert info.enabled and info.is_main and info.world_size == 1 and info.launched
        assert dist.is_initialized() and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert all_mean(torch.tensor([3.0]), info).item() == 3.0  # an all-reduce over the group
    finally:
        shutdown_distributed()
    assert not dist.is_initialized()
