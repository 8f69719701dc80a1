"""The arguments each head takes (a model card's or a spec's ``head_kwargs``), checked without torch.

:mod:`engine.models.heads` builds the heads; a model card (:mod:`engine.io.model_card`, read by
the viewer without torch) validates its ``head`` and ``head_kwargs`` against the same table.
"""

from __future__ import annotations

import math

from engine.specs import HEADS

#: Keyword arguments of each head: name -> (type, default). GeM: the exponent's initial value
#: ``p`` and the clamp ``eps`` of its input; attention: the width ``hidden`` of its MLP.
HEAD_ARGUMENTS: dict[str, dict[str, tuple[type, object]]] = {
    "max": {}, "avg": {},
    "gem": {"p": (float, 3.0), "eps": (float, 1e-6)},
    "attention": {"hidden": (int, 128)},
}
MAX_HIDDEN = 4096


def head_arguments(name: str, kwargs: dict) -> dict:
    """``kwargs`` checked against head ``name``'s arguments, defaults filled in; ValueError
    naming the head and the argument otherwise."""
    if name not in HEAD_ARGUMENTS:
        raise ValueError(f"head '{name}' is not one of {', '.join(HEADS)}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"head arguments must be an object, got {type(kwargs).__name__}")
    allowed = HEAD_ARGUMENTS[name]
    if unknown := sorted(set(kwargs) - set(allowed)):
        takes = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"head '{name}' takes no argument {', '.join(map(str, unknown))}; it takes {takes}")
    out = {}
    for key, (kind, default) in allowed.items():
        value = kwargs.get(key, default)
        if kind is int:
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_HIDDEN:
                raise ValueError(f"head '{name}' argument {key}={value!r} must be an integer from 1 to {MAX_HIDDEN}")
        elif (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
              or value <= 0):
            raise ValueError(f"head '{name}' argument {key}={value!r} must be a positive number")
        out[key] = kind(value)
    return out
