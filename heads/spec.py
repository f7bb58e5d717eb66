"""The head's typed schema: what a config may say about a head, checked before anything is built.

Block and activation names are Enums generated from the registries, so an unknown name fails when Hydra
composes the config; range checks (kernel size, widths, block count) run in `__post_init__`, which
`OmegaConf.to_object` calls (see `validate_head`).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

from .activations import ACTIVATIONS, plain
from .blocks import BLOCKS

BlockName = Enum("BlockName", {name: name for name in BLOCKS}, type=str)
ActivationName = Enum("ActivationName", {name: name for name in ACTIVATIONS}, type=str)

MAX_BLOCKS = 8


class HeadSpecError(ValueError):
    """A head option outside what is allowed; the message names the field, the value and the rule."""


def check_head_options(*, block: Any, num_blocks: Any, channels: Any, activation: Any, kernel_size: Any,
                       final_kernel_size: Any, expansion: Any, prefix: str = "head.") -> list[int]:
    """Validates head options; returns the per-block widths."""
    block, activation = plain(block), plain(activation)

    def fail(field: str, value: Any, allowed: str) -> None:
        raise HeadSpecError(f"{prefix}{field}={value!r} is not allowed: {allowed}")

    if block not in BLOCKS:
        fail("block", block, f"one of {sorted(BLOCKS)}")
    if activation not in ACTIVATIONS:
        fail("activation", activation, f"one of {sorted(ACTIVATIONS)}")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or not 1 <= num_blocks <= MAX_BLOCKS:
        fail("num_blocks", num_blocks, f"an integer from 1 to {MAX_BLOCKS}")
    for field, k in (("kernel_size", kernel_size), ("final_kernel_size", final_kernel_size)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            fail(field, k, "an odd integer >= 1 (3, 5 or 7 in the default space) so padding keeps the size")
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
        fail("expansion", expansion, "an integer >= 1")
    if isinstance(channels, int) and not isinstance(channels, bool):
        widths = [channels] * num_blocks
    elif isinstance(channels, Sequence) and not isinstance(channels, str):
        widths = list(channels)
        if len(widths) != num_blocks:
            fail("channels", widths, f"one width, or a list of exactly num_blocks={num_blocks} widths")
    else:
        fail("channels", channels, "a positive integer or a list of positive integers")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            fail("channels", channels, "positive integer widths")
    return widths


@dataclass
class HeadSpec:
    """A corner head as the config describes it; instantiated as a partial that the tracker completes
    with its input width and feature size."""

    _target_: str = "heads.CornerHead"
    _partial_: bool = True
    block: BlockName = BlockName.repvgg
    num_blocks: int = 2
    channels: Any = 128
    activation: ActivationName = ActivationName.relu
    kernel_size: int = 3
    final_kernel_size: int = 3
    expansion: int = 4
    norm: bool = True

    def __post_init__(self) -> None:
        check_head_options(block=self.block, num_blocks=self.num_blocks, channels=self.channels,
                           activation=self.activation, kernel_size=self.kernel_size,
                           final_kernel_size=self.final_kernel_size, expansion=self.expansion)


def validate_head(cfg: Any) -> HeadSpec:
    """Checks a composed `head` config node; raises HeadSpecError naming the field, value and rule."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return HeadSpec(**cfg)
