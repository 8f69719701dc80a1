"""Which torch device a job runs on, from the name a spec gives ("auto", "cpu", "cuda", "cuda:N")."""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.errors import SpecError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str, rank: int | None = None) -> torch.device:
    """The device ``name`` means here: "auto" is CUDA when available, else the CPU.

    ``rank`` (a local rank under torchrun) makes "auto" on a CUDA machine the GPU of that rank,
    so the ranks of one machine share its GPUs. Unknown names, and CUDA asked for where there
    is none, are a :class:`~engine.errors.SpecError` saying what to use instead.
    """
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda") if rank is None else torch.device("cuda", rank % torch.cuda.device_count())
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SpecError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device '{name}' was asked for but this torch build or machine has no CUDA; use cpu")
    return device
