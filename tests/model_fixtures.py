"""A hand-set model whose response is known, and slides to run it on.

``green_detector()`` is a SmallNet (split at its last stage, so the head is pool + linear only)
whose channel 0 fires on pure green and stays at 0 on grey, white, pink or purple; its class
"green" wins exactly where green is. Slides are written as real multi-level SVS files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.models import create_model

GREY = (235, 235, 235)  # glass background, as on real slides
GREEN = (0, 255, 0)
CLASSES = ("other", "green")
#: Green squares of the positive test slide: level-0 boxes (x0, y0, x1, y1).
GREEN_BOXES = ((256, 128, 448, 320), (640, 512, 768, 640))


def green_detector() -> nn.Module:
    torch.manual_seed(0)
    net = create_model("smallnet", width=4, num_classes=2, split="stage4", pool="max").eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_(1.0)
                m.bias.zero_()
        # Input normalised to [-1, 1]: green (-1, 1, -1) gives 4, any grey or white 0, purple < 0.
        net.stage1[0].weight[0, :, 1, 1] = torch.tensor([-1.0, 2.0, -1.0])
        net.stage1[1].bias[0] = -1.0  # green: 3; anything else: <= -1, cut by the ReLU
        for stage in (net.stage2, net.stage3, net.stage4):
            stage[0].weight[0, 0, 1, 1] = 1.0  # carry channel 0 through
        net.fc.weight.zero_()
        net.fc.weight[1, 0] = 4.0
        net.fc.bias.copy_(torch.tensor([1.0, -1.0]))
    return net


def write_test_slide(path: Path, boxes=GREEN_BOXES, size=(1024, 768)) -> Path:
    from engine.io.svs import write_svs_array

    rgb = np.empty((size[1], size[0], 3), np.uint8)
    rgb[:] = GREY
    # Some purple "tissue" so the tissue detector has something to find around the squares.
    rgb[64:704, 128:960] = (150, 90, 170)
    for x0, y0, x1, y1 in boxes:
        rgb[y0:y1, x0:x1] = GREEN
    return write_svs_array(path, rgb, mpp=0.5, app_mag=20, tile=256, downsamples=(1, 2, 4))


def save_green_detector(directory: Path, *, tile_size: int = 256) -> Path:
    from engine.io.checkpoints import ModelCard, save_checkpoint

    card = ModelCard(architecture="smallnet", classes=CLASSES, split="stage4", pool="max",
                     model_kwargs={"width": 4}, input_mpp=0.5, tile_size=tile_size,
                     provenance={"made_by": "tests/model_fixtures.py", "what": "hand-set green detector"})
    return save_checkpoint(directory, green_detector(), card)
