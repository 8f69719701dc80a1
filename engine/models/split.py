"""A classifier split into a streamed trunk and a conventional head.

The trunk is the local early part (streamed tile by tile); the head runs on the stitched
feature map: the remaining stages, a global pool (max or average) and a linear layer. The
split point is a stage name, as in the paper, which streamed the early layers only.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from engine.specs import POOLS


class ClassifierHead(nn.Module):
    """Remaining stages, global pool, linear classifier.

    ``forward`` gives slide-level logits (N, classes). ``forward_cells`` applies the same
    classifier to every cell of the head's feature map (N, classes, h, w) before pooling,
    which is the prediction map at the head's output stride.
    """

    def __init__(self, stages: nn.Sequential, fc: nn.Linear, pool: str):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got '{pool}'")
        self.stages, self.fc, self.pool = stages, fc, pool

    def features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.stages(fmap)

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        f = self.features(fmap)
        return f.amax(dim=(2, 3)) if self.pool == "max" else f.mean(dim=(2, 3))

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pooled(fmap))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from the pooled (N, C) features (a streamed trunk may pool block by block)."""
        return self.fc(pooled)

    def forward_cells(self, fmap: torch.Tensor) -> torch.Tensor:
        f = self.features(fmap)
        return torch.einsum("nchw,kc->nkhw", f, self.fc.weight) + self.fc.bias[None, :, None, None]


class SplitNet(nn.Module):
    """Base of every registered architecture: ordered stages, then pool and ``fc``.

    Subclasses register their stages as attributes (so parameter names match the reference
    implementation) and list them in ``stage_names``; ``fc`` is the classifier.
    """

    stage_names: tuple[str, ...] = ()

    def __init__(self, *, split: str, pool: str):
        super().__init__()
        self.split = split
        self.pool = pool

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
        """Stages after ``split``, global pool and ``fc`` (shares modules with this net)."""
        end = self._check_split()
        rest = nn.Sequential(OrderedDict((n, getattr(self, n)) for n in self.stage_names[end:]))
        return ClassifierHead(rest, self.fc, self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head()(self.trunk()(x))
