"""A registry of model builders: keyword-only, by name, duplicates refused."""

from __future__ import annotations

from typing import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"a model named '{name}' is already registered")
        _BUILDERS[name] = builder
        return builder

    return add


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture, e.g. ``create_model("resnet34", num_classes=2, split="layer2")``."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(list_models())}") from None
    return builder(**kwargs)


def list_models() -> list[str]:
    return sorted(_BUILDERS)
