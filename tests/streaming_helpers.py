"""Comparison of a streamed trunk with the plain trunk: output, every gradient."""

from __future__ import annotations

import torch

from engine.streaming import StreamingModule


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def loss_of(y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    # A loss that weighs every output cell differently, so any misplaced cell shows.
    return (y * weights).sum() + 0.5 * y.square().mean()


def reference_layout(stream: StreamingModule, dtype: torch.dtype) -> torch.memory_format:
    """The memory layout to run the conventional pass in: the streamed tiles' (see compare).
    Float64 keeps NCHW: its layouts agree far below any tolerance, and CPU kernels for float64
    NHWC are 10-25x slower (no oneDNN path)."""
    if dtype == torch.float64 or not stream.channels_last:
        return torch.contiguous_format
    return torch.channels_last


def compare(trunk: torch.nn.Module, x: torch.Tensor, tile, *, tol: float, **kw) -> StreamingModule:
    """Assert StreamingModule(trunk, tile, **kw)(x) equals trunk(x) in value, parameter and input
    gradients.

    Below float64, the conventional pass runs in the layout of the streamed tiles (NHWC unless
    ``channels_last=False``): float32 kernels of the two layouts sum in different orders, and on
    some CPUs that flips max-pool near-ties between NCHW and NHWC by far more than ``tol``
    (conventional NCHW and NHWC differed by 0.048 on an AMD EPYC), which says nothing about
    streaming.
    """
    stream = StreamingModule(trunk, tile, **kw)
    params = [p for p in trunk.parameters() if p.requires_grad]
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = trunk(x_ref.contiguous(memory_format=reference_layout(stream, x.dtype)))
    weights = torch.randn(y_ref.shape, dtype=y_ref.dtype, generator=torch.Generator().manual_seed(1))
    g_ref = torch.autograd.grad(loss_of(y_ref, weights), [x_ref, *params], allow_unused=True)

    x_s = x.detach().clone().requires_grad_(True)
    y_s = stream(x_s)
    assert y_s.shape == y_ref.shape
    assert rel_err(y_s, y_ref) <= tol, f"forward differs: {rel_err(y_s, y_ref)}"
    g_s = torch.autograd.grad(loss_of(y_s, weights), [x_s, *params], allow_unused=True)
    names = ["input"] + [n for n, p in trunk.named_parameters() if p.requires_grad]
    for name, a, b in zip(names, g_s, g_ref, strict=True):
        if b is None:
            assert a is None or not a.any(), name
            continue
        assert a is not None, f"no gradient for {name}"
        assert rel_err(a, b) <= tol, f"gradient of {name} differs: {rel_err(a, b):.3g}"
    return stream
