"""DistributedDataParallel plumbing for training under ``torchrun``.

The streamed trunk needs nothing special: its autograd Function returns ordinary parameter
gradients, so DDP's gradient hooks fire after each rank's streamed backward and the gradients
are all-reduced (averaged) as for any model. Ranks must agree on control flow (skip a step,
stop), so those decisions go through small all-reduces here. Collectives time out after
``TIMEOUT_S``: a rank that dies makes the others fail instead of waiting for ever (torchrun
also stops the remaining workers as soon as one exits with an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from engine.devices import resolve_device

TIMEOUT_S = 60


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run created the process group, so it destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPU);
    a single process (no ``WORLD_SIZE`` or 1) gets a context of one rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def device_for_rank(device: torch.device, ctx: DistContext) -> torch.device:
    """Under torchrun with GPUs, each rank takes the GPU of its local rank."""
    if ctx.active and device.type == "cuda" and device.index is None:
        device = resolve_device("cuda", ctx.local_rank)
        torch.cuda.set_device(device.index)
    return device


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one."""
    if not ctx.active:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(value: float, ctx: DistContext, device: torch.device) -> float:
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world_size


def gather_lists(items: list, ctx: DistContext) -> list:
    """Concatenate every rank's ``items`` (small Python values, e.g. validation scores)."""
    if not ctx.active:
        return list(items)
    parts: list = [None] * ctx.world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def wrap(module: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DDP around ``module`` when running on several ranks. Buffers are not broadcast each step:
    the trunk's BatchNorm statistics are frozen (identical on every rank), and running statistics
    of BatchNorm in the head follow each rank's own slides (rank 0's are the ones saved)."""
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)


def shutdown(ctx: DistContext, in_step: bool = False) -> None:
    """Leave the process group this run created. ``in_step``: every rank reached the same point
    (a normal end), so they wait for each other first; rank 0 may still be writing the last
    checkpoint, and a rank that tears its connections down under a peer's pending work can abort.
    After an error the ranks are not in step and a barrier could wait for the timeout."""
    if not (ctx.owns_group and dist.is_initialized()):
        return
    if in_step and ctx.active:
        dist.barrier()
    dist.destroy_process_group()
