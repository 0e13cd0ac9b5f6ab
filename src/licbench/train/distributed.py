"""Training on several processes (torchrun): the process group, this
process's rank, the collectives the loop runs, and DDP's wrapper.

With one process (no torchrun, or a world of one) every function here is the
identity or a constant, so the loop reads the same either way.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[None]:
    """Within: this process in torchrun's group, when torchrun started more
    than one; a group made here is left on the way out.

    gloo on the CPU, NCCL on CUDA; torchrun's environment (MASTER_ADDR, RANK,
    WORLD_SIZE, LOCAL_RANK) says where the others are. A group the caller
    made already is used as it is.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def collective_device() -> torch.device:
    """The device the process group's backend takes tensors on: NCCL takes
    CUDA tensors alone (this process's GPU), gloo CPU ones."""
    if dist.get_backend() == dist.Backend.NCCL:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over processes, on the device and in the dtype of ``values``
    (reduced on the backend's device: a validation's float64 sums live on the
    CPU, NCCL reduces on the GPU)."""
    if not dist.is_initialized():
        return values
    total = values.to(collective_device(), copy=True)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(values.device)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over processes (each process's values are means over its equal share)."""
    if not dist.is_initialized():
        return values
    return all_reduce_sum(values) / dist.get_world_size()


def broadcast_from_first(obj: T) -> T:
    """The first process's ``obj``, on every process: no shared file system needed."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=collective_device())
    return box[0]


def gather_from_all(obj: T) -> list[T]:
    """Every process's ``obj``, in rank order."""
    world = rank_and_world()[1]
    if world == 1:
        return [obj]
    gathered: list = [None] * world
    # It puts its buffers on the backend's device itself (NCCL: the current GPU, which process_group sets).
    dist.all_gather_object(gathered, obj)
    return gathered


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` under DistributedDataParallel when several processes train
    (its gradients averaged over them), else ``model`` itself."""
    if rank_and_world()[1] == 1:
        return model
    # The quantiles train on the aux loss alone, outside the forward pass:
    # DDP would wait for their gradients forever. The aux loss depends only
    # on parameters every process holds equal, so each process computes the
    # same aux gradients and their copies stay equal without a reduction.
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, [n for n, p in model.named_parameters() if n.endswith(".quantiles")])
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,  # CDF tables: constant while training
    )
