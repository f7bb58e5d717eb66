"""Activations by name, so a head spec can say `activation: relu6`."""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,  # bounded output: quantises well (the user's choice)
    "hardswish": nn.Hardswish,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": partial(nn.LeakyReLU, 0.1),
}


def plain(name: Any) -> Any:
    """A config Enum member (what a typed schema yields) as its plain value; anything else unchanged."""
    return getattr(name, "value", name)


def make_activation(name: str) -> nn.Module:
    name = plain(name)
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not known; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()
