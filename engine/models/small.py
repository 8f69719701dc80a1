"""A small fast network for tests, demos and CPU training: four conv-BN-ReLU stages."""

from __future__ import annotations

from torch import nn

from engine.models.registry import register_model
from engine.models.split import SplitNet


def _stage(c_in: int, c_out: int, *, stride: int = 1, pool: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
              nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SmallNet(SplitNet):
    """Total stride 16 and a 45-px receptive field at ``stage4``; ``width`` scales channels."""

    stage_names = ("stage1", "stage2", "stage3", "stage4")

    def __init__(self, *, num_classes: int = 2, split: str = "stage4", pool: str = "max", width: int = 16,
                 in_channels: int = 3):
        super().__init__(split=split, pool=pool)
        self.stage1 = _stage(in_channels, width, stride=2, pool=False)
        self.stage2 = _stage(width, 2 * width)
        self.stage3 = _stage(2 * width, 4 * width)
        self.stage4 = _stage(4 * width, 4 * width)
        self.fc = nn.Linear(4 * width, num_classes)


@register_model("smallnet")
def smallnet(*, num_classes: int = 2, split: str = "stage4", pool: str = "max", width: int = 16,
             in_channels: int = 3) -> SmallNet:
    return SmallNet(num_classes=num_classes, split=split, pool=pool, width=width, in_channels=in_channels)
