"""A classifier split into a streamed trunk and a conventional head.

The trunk is the local early part (streamed tile by tile); the head runs on the stitched
feature map: the remaining stages, a global pool (max, average, GeM or gated attention:
:mod:`engine.models.heads`) and a linear layer. The split point is a stage name, as in the
paper, which streamed the early layers only.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from engine.models.head_grid import stages_stride
from engine.models.heads import ClassifierHead, build_head, pooling_module
from engine.specs import POOLS

__all__ = ["ClassifierHead", "SplitNet"]  # ClassifierHead lives in engine.models.heads; importable here as before


class SplitNet(nn.Module):
    """Base of every registered architecture: ordered stages, then pool and ``fc``.

    Subclasses register their stages as attributes (so parameter names match the reference
    implementation) and list them in ``stage_names``; ``fc`` is the classifier.
    """

    stage_names: tuple[str, ...] = ()

    def __init__(self, *, split: str, pool: str):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got '{pool}'")
        self.split = split
        self.pool = pool
        self.head_name = pool  # set_head chooses another head

    def set_head(self, name: str, head_kwargs: dict | None = None) -> None:
        """Use head ``name`` (:data:`engine.specs.HEADS`) with ``head_kwargs``. Max and avg add no
        parameters; GeM's exponent and attention's MLP are registered as ``pooling``, and
        attention's ``fc`` classifies its embedding (``hidden`` wide), so it is made anew."""
        pooling = pooling_module(name, self.fc.in_features, dict(head_kwargs or {}))
        if name in POOLS:
            self.pool = name
        self.head_name = name
        if hasattr(self, "pooling"):
            del self.pooling
        if pooling is not None:
            self.pooling = pooling
        if name == "attention":
            self.fc = nn.Linear(pooling.embed.out_features, self.fc.out_features)

    def _check_split(self) -> int:
        if self.split not in self.stage_names:
            raise ValueError(f"split '{self.split}' is not a stage of {type(self).__name__}; "
                             f"choose one of {', '.join(self.stage_names)}")
        return self.stage_names.index(self.split) + 1

    def trunk(self) -> nn.Sequential:
        """Stages up to and including ``split`` (shares modules with this net)."""
        end = self._check_split()
        return nn.Sequential(OrderedDict((n, getattr(self, n)) for n in self.stage_names[:end]))

    def head(self) -> ClassifierHead:
        """Stages after ``split``, the head's pool and ``fc`` (shares modules with this net)."""
        end = self._check_split()
        rest = nn.Sequential(OrderedDict((n, getattr(self, n)) for n in self.stage_names[end:]))
        # The stages' stride is traced once per split (head() is called at every forward).
        strides = self.__dict__.setdefault("_head_strides", {})
        if self.split not in strides:
            strides[self.split] = stages_stride(rest)
        return build_head(self.head_name, rest, self.fc, getattr(self, "pooling", None), strides[self.split])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head()(self.trunk()(x))
