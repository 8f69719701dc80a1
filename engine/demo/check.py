"""The engine's demo check: stream a CNN trunk over an image and show it equals the conventional run."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from engine.models import create_model
from engine.streaming import StreamingModule


@dataclass(frozen=True)
class CheckResult:
    model: str
    dtype: str
    size: int
    tile: int
    blocks: int
    forward_err: float
    param_grad_err: float
    input_grad_err: float
    stream_seconds: float
    conventional_seconds: float


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def check(model: str = "resnet18", split: str = "layer2", size: int = 768, tile: int = 384,
          dtype: torch.dtype = torch.float64, seed: int = 0) -> CheckResult:
    """Train-step gradients of a streamed trunk against conventional back-propagation."""
    torch.manual_seed(seed)
    net = create_model(model, split=split).to(dtype).eval()
    trunk, head = net.trunk(), net.head()
    # Both runs in the streamed tiles' layout (NHWC): in float32, NCHW and NHWC kernels sum in
    # different orders, which flips max-pool ties and moves gradients by 1e-3 between two
    # conventional runs alone; the check is about the method, not the layout.
    x = torch.rand(1, 3, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def step(run):
        xi = x.clone(memory_format=torch.channels_last).requires_grad_(True)
        net.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        y = run(xi)
        torch.nn.functional.cross_entropy(head(y), torch.tensor([1])).backward()
        dt = time.perf_counter() - t0
        return y.detach(), [p.grad.clone() for p in trunk.parameters()], xi.grad, dt

    y_ref, g_ref, gx_ref, t_ref = step(trunk)
    stream = StreamingModule(trunk, tile)
    y_s, g_s, gx_s, t_s = step(stream)
    return CheckResult(model, str(dtype).replace("torch.", ""), size, tile, stream.tile_plan((size, size)).n_blocks,
                       _rel(y_s, y_ref), max(_rel(a, b) for a, b in zip(g_s, g_ref, strict=True)), _rel(gx_s, gx_ref), t_s, t_ref)


def main() -> int:
    print("StreamSlide engine check: a streamed training step against conventional back-propagation\n")
    print("| model | dtype | input | tile | blocks | forward err | max param-grad err | input-grad err | stream s | conventional s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        r = check(dtype=dtype)
        ok &= max(r.forward_err, r.param_grad_err, r.input_grad_err) <= tol
        print(f"| {r.model} (to {'layer2'}) | {r.dtype} | {r.size}² | {r.tile} | {r.blocks} | {r.forward_err:.1e} | "
              f"{r.param_grad_err:.1e} | {r.input_grad_err:.1e} | {r.stream_seconds:.2f} | {r.conventional_seconds:.2f} |")
    print("\nexact (within 1e-10 in float64, 1e-4 in float32)" if ok else "\nMISMATCH: streaming is not exact here")
    return 0 if ok else 1
