"""The head's typed schema: what a config may say about a head, checked before anything is built.

Activation names are an Enum generated from `ACTIVATIONS`, so an unknown one fails when Hydra composes the
config. Block names are plain strings checked against the block registry when the spec is validated, so a block
type registered after this module was imported (`@register_block` in another module) is accepted. Those and the
range checks (kernel size, widths, block count) run in `__post_init__`, which `OmegaConf.to_object` calls (see
`validate_head` and `tracker.config.validate`).

Options a block type does not take (RepVGG blocks have no `norm` switch, only inverted residuals have an
`expansion`) must stay at their schema default, the value a config that never mentions them composes to; any
other value is an error naming the block types that take the option, never a value silently dropped. Keeping
them at the default, rather than rewriting them during validation, is what makes equal heads compose to equal
configs: the sweeper recognises duplicates by hashing the composed config, before any validation runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

from . import blocks as _blocks
from .layers import ACTIVATIONS, plain

ActivationName = Enum("ActivationName", {name: name for name in ACTIVATIONS}, type=str)

MAX_BLOCKS = 8

# The options a head passes to its blocks, with their defaults: the value an option must keep for a block type
# that does not take it (see the module docstring). HeadSpec's and CornerHead's defaults are these.
BLOCK_OPTION_DEFAULTS: dict[str, Any] = {"kernel_size": 3, "activation": "relu", "expansion": 4, "norm": True}


def block_names() -> list[str]:
    """The registered block types, now (not at import)."""
    return sorted(_blocks.BLOCKS)


class HeadSpecError(ValueError):
    """A head option outside what is allowed; the message names the field, the value and the rule."""


def check_head_options(*, block: Any, num_blocks: Any, channels: Any, activation: Any, kernel_size: Any,
                       final_kernel_size: Any, expansion: Any, norm: Any = BLOCK_OPTION_DEFAULTS["norm"],
                       prefix: str = "head.") -> list[int]:
    """Validates head options against the rules and against what `block` takes; returns the per-block widths."""
    block, activation = plain(block), plain(activation)

    def fail(field: str, value: Any, allowed: str) -> None:
        raise HeadSpecError(f"{prefix}{field}={value!r} is not allowed: {allowed}")

    if not isinstance(block, str) or block not in _blocks.BLOCKS:
        fail("block", block, f"one of the registered block types {block_names()}")
    if activation not in ACTIVATIONS:
        fail("activation", activation, f"one of {sorted(ACTIVATIONS)}")
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or not 1 <= num_blocks <= MAX_BLOCKS:
        fail("num_blocks", num_blocks, f"an integer from 1 to {MAX_BLOCKS}")
    for field, k in (("kernel_size", kernel_size), ("final_kernel_size", final_kernel_size)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            fail(field, k, "an odd integer >= 1 (3, 5 or 7 in the default space) so padding keeps the size")
    if isinstance(expansion, bool) or not isinstance(expansion, int) or expansion < 1:
        fail("expansion", expansion, "an integer >= 1")
    if not isinstance(norm, bool):
        fail("norm", norm, "true or false")
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
    given = {"kernel_size": kernel_size, "activation": activation, "expansion": expansion, "norm": norm}
    for field in inapplicable_options(block, given):
        takers = [name for name in block_names() if _takes(name, field)]
        fail(field, given[field], f"{prefix}block={block!r} does not take {field}; only "
             f"{', '.join(takers) or 'no registered block type'} take{'s' if len(takers) == 1 else ''} it "
             f"(leave it at its default {BLOCK_OPTION_DEFAULTS[field]!r} for other block types)")
    return widths


def _takes(block: str, option: str) -> bool:
    takes = _blocks.block_options(block)
    return takes is None or option in takes


def inapplicable_options(block: str, options: dict[str, Any]) -> list[str]:
    """The options that `block` does not take and that are set to something other than their default."""
    return [k for k, v in options.items() if not _takes(block, k) and plain(v) != BLOCK_OPTION_DEFAULTS[k]]


def block_kwargs(block: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options `block` takes (after `check_head_options`, the others hold their defaults: nothing is lost)."""
    return {k: v for k, v in options.items() if _takes(block, k)}


@dataclass
class HeadSpec:
    """A corner head as the config describes it; instantiated as a partial that the tracker completes
    with its input width and feature size."""

    _target_: str = "heads.CornerHead"
    _partial_: bool = True
    block: str = "repvgg"  # a registered block type (`heads.BLOCKS`), checked in __post_init__
    num_blocks: int = 2
    channels: Any = 128
    activation: ActivationName = ActivationName[BLOCK_OPTION_DEFAULTS["activation"]]
    kernel_size: int = BLOCK_OPTION_DEFAULTS["kernel_size"]
    final_kernel_size: int = 3
    expansion: int = BLOCK_OPTION_DEFAULTS["expansion"]  # mbconv only
    norm: bool = BLOCK_OPTION_DEFAULTS["norm"]  # dsconv and mbconv (RepVGG blocks always have BN)

    def __post_init__(self) -> None:
        check_head_options(block=self.block, num_blocks=self.num_blocks, channels=self.channels,
                           activation=self.activation, kernel_size=self.kernel_size,
                           final_kernel_size=self.final_kernel_size, expansion=self.expansion, norm=self.norm)


def validate_head(cfg: Any) -> HeadSpec:
    """Checks a composed `head` config node; raises HeadSpecError naming the field, value and rule."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return HeadSpec(**cfg)


_LABEL_FORMS = {"num_blocks": "x{}", "channels": "w{}", "activation": "{}", "kernel_size": "k{}",
                "final_kernel_size": "f{}", "expansion": "e{}"}


def head_label(head: Any) -> str:
    """A short name built from every field of a head spec (a mapping): `dsconv x2 w64 relu6 k3 f1 no-bn`.
    An option the block does not take is left out only at its default (where it cannot differ, see the module
    docstring); any other field, one added later included, is printed, so two different heads never share a
    label."""
    head = {k: plain(v) for k, v in dict(head).items() if not str(k).startswith("_")}
    block = head.pop("block", "?")
    parts = [str(block)]
    known = isinstance(block, str) and block in _blocks.BLOCKS
    for field, value in head.items():
        if field in BLOCK_OPTION_DEFAULTS and known and not _takes(block, field) \
                and value == BLOCK_OPTION_DEFAULTS[field]:
            continue
        if field == "channels" and isinstance(value, (list, tuple)):
            value = "-".join(map(str, value))
        if field == "norm" and isinstance(value, bool):
            parts.append("bn" if value else "no-bn")
        elif field in _LABEL_FORMS:
            parts.append(_LABEL_FORMS[field].format(value))
        else:
            parts.append(f"{field}={value}")
    return " ".join(parts)
