"""A registry of model builders: keyword-only, by name, duplicates refused.

Builders state their arguments (keyword-only, with defaults), so the arguments a model card or
a training spec passes are checked against them before anything is built: an unknown argument
or an integer out of :data:`INT_ARGUMENT_RANGE` (a card is read from an untrusted file, and a
builder allocates what it is asked for) is a ValueError naming the argument.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
#: The range of an integer builder argument (widths, channels): enough for any real model,
#: far below what would exhaust memory.
INT_ARGUMENT_RANGE = (1, 4096)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"a model named '{name}' is already registered")
        _BUILDERS[name] = builder
        return builder

    return add


def create_model(name: str, *, head: str | None = None, head_kwargs: dict | None = None, **kwargs) -> nn.Module:
    """Build a registered architecture, e.g. ``create_model("resnet34", num_classes=2, split="layer2")``.

    ``head`` (one of :data:`engine.specs.HEADS`; None: the ``pool``) and ``head_kwargs`` choose
    the head (:mod:`engine.models.heads`); its parameters are made after the architecture's, so
    a seed gives the same trunk whatever the head."""
    try:
        builder = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(list_models())}") from None
    if head in ("max", "avg"):
        if kwargs.get("pool", head) != head:
            raise ValueError(f"head '{head}' and pool '{kwargs['pool']}' disagree; give one of them")
        kwargs["pool"] = head
    check_arguments(name, builder, kwargs)
    model = builder(**kwargs)
    if head is not None or head_kwargs:
        if not hasattr(model, "set_head"):
            raise ValueError(f"'{name}' has no choice of head")
        model.set_head(head or model.pool, head_kwargs)
    return model


def check_arguments(name: str, builder: Callable[..., nn.Module], kwargs: dict) -> None:
    """Refuse arguments ``builder`` does not state, and integers where it takes one but out of range."""
    params = inspect.signature(builder).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return  # a builder that does not state its arguments: its own errors must do
    if unknown := sorted(set(kwargs) - set(params)):
        raise ValueError(f"'{name}' takes no argument {', '.join(unknown)}; it takes {', '.join(params)}")
    lo, hi = INT_ARGUMENT_RANGE
    for key, value in kwargs.items():
        default = params[key].default
        if isinstance(default, int) and not isinstance(default, bool):
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"'{name}' argument {key}={value!r} must be an integer from {lo} to {hi}")


def list_models() -> list[str]:
    return sorted(_BUILDERS)
