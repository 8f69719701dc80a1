"""The one place that knows which devices a job may ask for and how a name becomes a device.

Specs carry a device name (checked here without torch, so specs stay torch-free);
:func:`resolve_device` turns it into a ``torch.device`` when the job starts. Under
``torchrun`` each process passes its local rank, and a CUDA device without an index then
becomes that rank's GPU, so N processes on one machine use N GPUs.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from engine.errors import SpecError

if TYPE_CHECKING:
    import torch

#: What a spec's ``device`` may be (e.g. a device menu's entries), besides "cuda:N", GPU N.
DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N"

_CUDA_INDEX = re.compile(r"cuda:\d+")


def check_device_name(name: str) -> str:
    """``name`` when it is one of :data:`DEVICES` or "cuda:N"; else :class:`SpecError` listing them."""
    if isinstance(name, str) and (name in DEVICES or _CUDA_INDEX.fullmatch(name)):
        return name
    raise SpecError(f"unknown device {name!r}; use {', '.join(DEVICES)} or cuda:N")


def local_rank() -> int | None:
    """This process's local rank under ``torchrun`` (``LOCAL_RANK``), or None outside it."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None else None


def resolve_device(name: str, rank: int | None = None) -> "torch.device":
    """The ``torch.device`` for a device name (imports torch).

    "auto" is CUDA when this torch build and machine have it, else the CPU. ``rank`` (a local
    rank, see :func:`local_rank`): a CUDA device without an index becomes GPU ``rank % count``.
    Raises :class:`SpecError` for a name :func:`check_device_name` refuses or CUDA asked for where
    there is none.
    """
    import torch

    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device {name!r} was asked for but this torch build or machine has no CUDA; use cpu")
    if device.type == "cuda" and device.index is None and rank is not None:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    return device
