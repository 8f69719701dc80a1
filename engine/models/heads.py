"""Heads on the trunk's output map: global max, mean, generalised mean (GeM) and gated attention.

Every head is the model's remaining conventional ``stages`` (possibly none), a pooling of the
head's feature map into one vector per image, and the linear classifier ``fc``. They all take an
optional tissue ``mask``: a bool tensor (N or 1, 1, H, W) on the TRUNK's output grid. The masked
model is, exactly:

1. trunk-map cells outside the mask set to 0 with ``torch.where`` (never a multiplication, so a
   NaN or inf in cells the streamed trunk did not compute reaches neither the value nor the
   gradient);
2. the remaining stages on that map;
3. the pool over the head-grid cells covered by the mask only. The mask is carried to the head's
   grid (smaller when the stages stride) by an "any" over the trunk cells under each head cell,
   head cell ``i`` over trunk cells ``[s i, s i + s)`` with ``s`` the stages' total stride
   (``stride``, traced from their layers: :mod:`engine.models.head_grid`,
   :func:`engine.geometry.trunk_mask_on_head_grid`).

An empty mask (an image without tissue) has nothing to pool: a head refuses it with
:class:`EmptyMaskError` rather than return NaN. The training and evaluation code that builds masks
(:mod:`engine.train.masks`) never passes one: it falls back to the whole map and says so.

Parameters: max and avg add none (their state dicts are the models' as before). GeM adds its
exponent ``p`` and gated attention its MLP; they are registered on the model as ``pooling`` (so
``pooling.p``, ``pooling.embed.weight``, ...); attention's ``fc`` classifies the ``hidden``-wide
embedding (CLAM), so its shape follows ``hidden``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from engine.errors import EmptyMaskError
from engine.head_arguments import HEAD_ARGUMENTS, head_arguments
from engine.models.head_grid import mask_on_head_grid, stages_stride
from engine.specs import HEADS

#: GeM's exponent is clamped to at least this (a generalised mean needs p > 0).
GEM_P_MIN = 0.1


def _check_mask(mask: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
    if mask.dim() != 4 or mask.shape[1] != 1 or tuple(mask.shape[2:]) != tuple(fmap.shape[2:]) \
            or mask.shape[0] not in (1, fmap.shape[0]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit a map of shape {tuple(fmap.shape)}: "
                         "give a bool (N or 1, 1, H, W) mask on the trunk's output grid")
    mask = mask.to(device=fmap.device, dtype=torch.bool)
    if not bool(mask.flatten(1).any(dim=1).all()):
        raise EmptyMaskError("the tissue mask holds no cell of the map for some image, so there is nothing to pool; "
                             "use no mask (tissue_mask='none') for it, or check the tissue detection")
    return mask


class ClassifierHead(nn.Module):
    """Remaining stages, a global pool, the linear classifier; the base of every head.

    ``forward`` gives slide-level logits (N, classes). ``forward_cells`` applies the classifier
    to every cell of the head's feature map (N, classes, h, w) before pooling: the prediction map
    at the head's output stride. ``pool`` names the head ("max", "avg", "gem", "attention");
    ``reducible`` says whether a streamed trunk may pool it block by block (max and avg).
    """

    reducible = True

    def __init__(self, stages: nn.Sequential, fc: nn.Linear, pool: str, stride: tuple[int, int] | None = None):
        super().__init__()
        if pool not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got '{pool}'")
        self.stages, self.fc, self.pool = stages, fc, pool
        #: Trunk cells (rows, cols) per head cell: the stages' total stride (traced unless given).
        self.stride = tuple(stride) if stride is not None else stages_stride(stages)

    @property
    def has_stages(self) -> bool:
        return len(list(self.stages.children())) > 0

    def features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.stages(fmap)

    def masked_features(self, fmap: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's feature map of the masked model and the mask on its grid (None: no mask)."""
        if mask is None:
            return self.features(fmap), None
        mask = _check_mask(mask, fmap)
        f = self.features(torch.where(mask, fmap, torch.zeros((), dtype=fmap.dtype, device=fmap.device)))
        return f, mask_on_head_grid(mask, self.stride, tuple(f.shape[2:]))

    def pool_features(self, f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(N, C) from the head's feature map ``f`` over ``mask`` (on ``f``'s grid, or None)."""
        if self.pool == "max":
            if mask is None:
                return f.amax(dim=(2, 3))
            return torch.where(mask, f, torch.full((), -math.inf, dtype=f.dtype, device=f.device)).amax(dim=(2, 3))
        if mask is None:
            return f.mean(dim=(2, 3))
        zero = torch.zeros((), dtype=f.dtype, device=f.device)
        return torch.where(mask, f, zero).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).to(f.dtype)

    def pooled(self, fmap: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.pool_features(*self.masked_features(fmap, mask))

    def forward(self, fmap: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.pooled(fmap, mask))

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits from the pooled (N, C) features (a streamed trunk may pool block by block)."""
        return self.fc(pooled)

    def cell_features(self, f: torch.Tensor) -> torch.Tensor:
        """What ``fc`` reads at each cell of the head's feature map (the features themselves here)."""
        return f

    def forward_cells(self, fmap: torch.Tensor) -> torch.Tensor:
        f = self.cell_features(self.features(fmap))
        return torch.einsum("nchw,kc->nkhw", f, self.fc.weight) + self.fc.bias[None, :, None, None]


class MaxHead(ClassifierHead):
    """Global max over the (masked) cells."""

    def __init__(self, stages: nn.Sequential, fc: nn.Linear, stride: tuple[int, int] | None = None):
        super().__init__(stages, fc, "max", stride)


class AvgHead(ClassifierHead):
    """Global mean over the (masked) cells."""

    def __init__(self, stages: nn.Sequential, fc: nn.Linear, stride: tuple[int, int] | None = None):
        super().__init__(stages, fc, "avg", stride)


class GeMPool(nn.Module):
    """The parameters of generalised-mean pooling: the learnable exponent ``p``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        if not p > 0 or not eps > 0:
            raise ValueError(f"GeM needs p > 0 and eps > 0, got p={p}, eps={eps}")
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = float(eps)


class GeMHead(ClassifierHead):
    """Generalised mean ``(mean over cells of max(f, eps)^p)^(1/p)``: p = 1 the mean, p -> inf the
    max (Radenović et al. 2018); p is learnt, clamped to at least :data:`GEM_P_MIN`. The input is
    clamped at ``eps`` because a fractional power of 0 or of a negative value has no gradient."""

    reducible = False

    def __init__(self, stages: nn.Sequential, fc: nn.Linear, gem: GeMPool, stride: tuple[int, int] | None = None):
        super().__init__(stages, fc, "gem", stride)
        self.gem = gem

    def pool_features(self, f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        p = self.gem.p.clamp(min=GEM_P_MIN).to(f.dtype)
        powered = f.clamp(min=self.gem.eps).pow(p)
        if mask is None:
            mean = powered.mean(dim=(2, 3))
        else:
            zero = torch.zeros((), dtype=f.dtype, device=f.device)
            mean = torch.where(mask, powered, zero).sum(dim=(2, 3)) / mask.sum(dim=(2, 3)).to(f.dtype)
        return mean.pow(1.0 / p)


class GatedAttention(nn.Module):
    """Gated attention MIL (Ilse et al. 2018; CLAM's single branch): per cell ``h = ReLU(embed f)``,
    score ``w . (tanh(V h) * sigmoid(U h))``."""

    def __init__(self, features: int, hidden: int = 128):
        super().__init__()
        self.embed = nn.Linear(features, hidden)
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)

    def embedding(self, f: torch.Tensor) -> torch.Tensor:
        """(N, hidden, h, w) from the (N, C, h, w) features."""
        return torch.relu(torch.einsum("nchw,dc->ndhw", f, self.embed.weight) + self.embed.bias[None, :, None, None])

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        """(N, 1, h, w) unnormalised attention of each cell's embedding."""
        x = h.permute(0, 2, 3, 1)
        gated = torch.tanh(self.attention_v(x)) * torch.sigmoid(self.attention_u(x))
        return self.attention_w(gated).permute(0, 3, 1, 2)


class AttentionHead(ClassifierHead):
    """Attention-weighted mean of the cells' embeddings (softmax over the masked cells), then ``fc``."""

    reducible = False

    def __init__(self, stages: nn.Sequential, fc: nn.Linear, attention: GatedAttention,
                 stride: tuple[int, int] | None = None):
        super().__init__(stages, fc, "attention", stride)
        self.attention_net = attention

    def _weights(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        s = self.attention_net.scores(h)
        if mask is not None:
            s = torch.where(mask, s, torch.full((), -math.inf, dtype=s.dtype, device=s.device))
        n = s.shape[0]
        return torch.softmax(s.reshape(n, -1), dim=1).reshape(s.shape)  # exp(-inf) = 0: outside weighs 0

    def attention(self, fmap: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1, h, w) attention weights on the head's grid: they sum to 1 over the masked cells
        and are 0 outside."""
        f, m = self.masked_features(fmap, mask)
        return self._weights(self.attention_net.embedding(f), m)

    def pool_features(self, f: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.attention_net.embedding(f)
        a = self._weights(h, mask)
        return (h * a).sum(dim=(2, 3))

    def cell_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.attention_net.embedding(f)


def build_head(name: str, stages: nn.Sequential, fc: nn.Linear, pooling: nn.Module | None,
               stride: tuple[int, int] | None = None) -> ClassifierHead:
    """The head ``name`` over modules the model owns (``pooling``: its GeM or attention parameters;
    ``stride``: the stages' stride when known, else traced)."""
    if name == "max":
        return MaxHead(stages, fc, stride)
    if name == "avg":
        return AvgHead(stages, fc, stride)
    if name == "gem":
        return GeMHead(stages, fc, pooling, stride)
    if name == "attention":
        return AttentionHead(stages, fc, pooling, stride)
    raise ValueError(f"head must be one of {', '.join(HEADS)}, got '{name}'")


def pooling_module(name: str, features: int, kwargs: dict) -> nn.Module | None:
    """The parameters head ``name`` adds to a model whose head features have ``features`` channels."""
    args = head_arguments(name, kwargs)
    if name == "gem":
        return GeMPool(**args)
    if name == "attention":
        return GatedAttention(features, args["hidden"])
    return None


__all__ = ["AttentionHead", "AvgHead", "ClassifierHead", "EmptyMaskError", "GatedAttention", "GeMHead", "GeMPool",
           "HEAD_ARGUMENTS", "MaxHead", "build_head", "head_arguments", "mask_on_head_grid", "pooling_module"]
