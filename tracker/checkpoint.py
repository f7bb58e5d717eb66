"""Checkpoints: the official STARK-Lightning weights through an explicit key mapping, and our own files.

The official file (`STARK_Lightning_X_trt_ep0500.pth.tar`) keeps its state dict under `net` with module
names `backbone.body.stage0..3`, `bottleneck`, `pos_emb_x`, `pos_emb_z0`, `transformer`,
`box_head.conv_tower`; `official_names` maps each of our state-dict keys to its name there.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heads import RepVGGBlock

from .io import atomic_path
from .model import TRUNK_PREFIXES, StarkLightning

_REPVGG_BRANCHES = {"dense": "rbr_dense", "pointwise": "rbr_1x1", "identity": "rbr_identity", "fused": "rbr_reparam"}
_TOP_LEVEL = [
    (r"^backbone\.stage0\.0\.", "backbone.body.stage0."),
    (r"^backbone\.(?!body\.)", "backbone.body."),
    # STARK-Lightning's TransformerEncoderLite holds its one layer directly (no `layers.0.`, unlike STARK-S/ST)
    (r"^encoder\.self_attn\.in_proj\.(weight|bias)$", r"transformer.encoder.self_attn.in_proj_\1"),
    (r"^encoder\.", "transformer.encoder."),
    (r"^template_pos\.", "pos_emb_z0."),
    (r"^search_pos\.", "pos_emb_x."),
    (r"^head\.blocks\.(\d+)\.", r"box_head.conv_tower.\1."),
]


class CheckpointError(RuntimeError):
    pass


def official_names(model: StarkLightning) -> dict[str, str]:
    """Our state-dict key -> the official checkpoint's key (BN's num_batches_tracked left out)."""
    repvgg = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, RepVGGBlock))
    num_blocks = len(model.head.blocks) if hasattr(model.head, "blocks") else 0
    names = {}
    for key in model.state_dict():
        if key.endswith("num_batches_tracked"):
            continue
        new = key
        owner = next((p for p in repvgg if key.startswith(p)), None)
        if owner is not None:
            branch, rest = key[len(owner):].split(".", 1)
            new = f"{owner}{_REPVGG_BRANCHES.get(branch, branch)}.{rest}"
        for pattern, repl in _TOP_LEVEL:
            new = re.sub(pattern, repl, new)
        new = re.sub(r"^head\.predictor\.", f"box_head.conv_tower.{num_blocks}.", new)
        names[key] = new
    return names


def _torch_load(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors differ across torch versions
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be loaded with weights_only=True ({exc}); it holds objects that "
            "are not tensors. Re-save only its state dict (torch.save({'net': ckpt['net']}, out)) in a "
            "trusted environment.") from exc


def load_official_checkpoint(model: StarkLightning, path: str | os.PathLike, include_head: bool = True) -> None:
    """Loads the official STARK-Lightning weights into `model`.

    With `include_head=False` only the trunk (backbone, bottleneck, positions, encoder) is loaded and the
    official head's keys are ignored: the way to put a new head on the official trunk.
    Any missing, unexpected or mis-shaped key raises a CheckpointError that lists them."""
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        keys = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected the official layout with a state dict under 'net'; found {keys}")
    state = {k: v for k, v in ckpt["net"].items() if not k.endswith("num_batches_tracked")}
    names = official_names(model)
    if not include_head:
        names = {ours: theirs for ours, theirs in names.items() if ours.startswith(TRUNK_PREFIXES)}
        state = {k: v for k, v in state.items() if not k.startswith("box_head.")}
    _load_mapped(model, state, names, str(path))


def _load_mapped(model: nn.Module, state: dict[str, torch.Tensor], names: dict[str, str], source: str) -> None:
    ours = model.state_dict()
    missing = sorted(theirs for theirs in names.values() if theirs not in state)
    unexpected = sorted(set(state) - set(names.values()))
    shapes = [f"{theirs}: checkpoint {tuple(state[theirs].shape)} vs model {tuple(ours[key].shape)}"
              for key, theirs in names.items() if theirs in state and state[theirs].shape != ours[key].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing: {missing}" if missing else "",
                 f"{len(unexpected)} unexpected: {unexpected}" if unexpected else "",
                 f"{len(shapes)} with other shapes: {shapes}" if shapes else ""]
        raise CheckpointError(f"{source} does not fit the model; " + "; ".join(p for p in parts if p))
    model.load_state_dict({key: state[theirs] for key, theirs in names.items()}, strict=False)


def save_checkpoint(path: str | os.PathLike, **payload: Any) -> Path:
    """Writes atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads one of this project's checkpoints (a dict with at least `model`, a state dict)."""
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a LightTrack checkpoint (no 'model' state dict); for the official "
                              "STARK-Lightning file use load_official_checkpoint")
    return ckpt


def load_trunk(model: StarkLightning, path: str | os.PathLike) -> None:
    """Loads only the trunk (backbone, bottleneck, positions, encoder) from our checkpoint or the official one."""
    ckpt = _torch_load(path)
    if isinstance(ckpt, dict) and "net" in ckpt:
        load_official_checkpoint(model, path, include_head=False)
        return
    state = load_checkpoint(path)["model"]
    trunk = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
    names = {k: k for k in model.state_dict() if k.startswith(TRUNK_PREFIXES) and not k.endswith("num_batches_tracked")}
    _load_mapped(model, {k: v for k, v in trunk.items() if not k.endswith("num_batches_tracked")}, names, str(path))
