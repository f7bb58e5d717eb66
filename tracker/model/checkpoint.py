"""Checkpoints: the official STARK-Lightning weights through an explicit key mapping, and our own files.

The official file (`STARK_Lightning_X_trt_ep0500.pth.tar`) keeps its state dict under `net` with module
names `backbone.body.stage0..3`, `bottleneck`, `pos_emb_x`, `pos_emb_z0`, `transformer`,
`box_head.conv_tower`; `official_names` maps each of our state-dict keys to its name there.

That file also pickles STARK's trainer objects (`settings`, `stats`: classes from STARK's package `lib`), so
`torch.load(weights_only=True)` refuses it. Such a file is read by a restricted unpickler instead: `lib.*` classes
become inert stand-ins, a short list of data types is allowed, any other global is refused before anything runs,
and only `net` is kept. Our own checkpoints (a dict with `model`) must load with weights_only=True.
"""
from __future__ import annotations

import _compat_pickle
import importlib
import logging
import os
import pickle
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heads.layers import RepVGGBlock

from ..io import atomic_path
from .stark import TRUNK_PREFIXES, StarkLightning

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


log = logging.getLogger(__name__)


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


class StarkStandIn:
    """In place of a class from STARK's package `lib`, which is not installed: keeps what the pickle gives it
    (constructor arguments, BUILD state, items) as data and runs nothing. State attributes read through."""

    def __new__(cls, *args: Any, **kwargs: Any) -> StarkStandIn:
        obj = super().__new__(cls)
        obj._stark_args, obj._stark_state, obj._stark_items = (args, kwargs), None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._stark_state = state  # kept whole, not merged into __dict__: it cannot shadow these methods

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("_stark_state")
        if isinstance(state, dict) and name in state and not name.startswith("__"):  # no protocol hooks
            return state[name]
        raise AttributeError(name)

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS, for a dict subclass
        self._stark_items.append((key, value))

    def append(self, item: Any) -> None:  # APPENDS, for a list subclass
        self._stark_items.append(item)

    def extend(self, items: Any) -> None:
        self._stark_items.extend(items)

    def __repr__(self) -> str:
        return f"<stand-in for {type(self).__module__}.{type(self).__qualname__}>"


_STAND_INS: dict[tuple[str, str], type] = {}
_REBUILDS = ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
             "_rebuild_parameter_with_state")
_ALLOWED = {("torch._utils", name) for name in _REBUILDS} | {
    ("torch", "device"), ("torch", "Size"), ("collections", "OrderedDict"), ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex")}
# numpy scalars and arrays are data (a dtype, a shape and bytes; an object array's items are unpickled through
# this find_class too); STARK's stats may hold numpy floats. numpy 2 moved numpy.core to numpy._core.
_NUMPY = {("numpy", "dtype"), ("numpy", "ndarray")} | {
    (core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("scalar", "_reconstruct")}


class _Refused(Exception):
    pass


def _stand_in(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (StarkStandIn,), {"__module__": module, "__qualname__": name})
    return _STAND_INS[key]


def _numpy_global(name: str) -> Any:
    import numpy as np
    if name in ("dtype", "ndarray"):
        return getattr(np, name)
    core = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
    return getattr(importlib.import_module(f"{core}.multiarray"), name)


class _StarkUnpickler(pickle.Unpickler):
    """Resolves only the globals a STARK trainer file needs. torch.load subclasses this class and resolves
    `*Storage` names itself (zip and legacy formats alike) before calling this find_class for every other name."""

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 writes Python 2 names (`__builtin__`); map them back as pickle itself would
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if module == "lib" or module.startswith("lib."):
            return _stand_in(module, name)
        if (module, name) in _NUMPY:
            return _numpy_global(name)
        if (module, name) in _ALLOWED or (module == "torch" and isinstance(vars(torch).get(name), torch.dtype)):
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


# torch.load's pickle_module: it needs Unpickler, load (legacy format's headers) and __name__
_STARK_PICKLE = types.ModuleType("stark_pickle", _StarkUnpickler.__doc__)
_STARK_PICKLE.Unpickler = _StarkUnpickler
_STARK_PICKLE.load = lambda file, **kwargs: _StarkUnpickler(file, **kwargs).load()


def _load_stark(path: Path, weights_only_error: Exception) -> dict[str, Any]:
    """The official trainer file: restricted unpickling, then only `net` is kept."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_STARK_PICKLE)
    except _Refused as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} refused: it pickles the global {exc}, which may run "
                              "code; only tensors, plain data and STARK's own classes (as stand-ins) load") from None
    except Exception as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} could not be loaded ({weights_only_error}; {exc})") from exc
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        raise CheckpointError(
            f"checkpoint {str(path)!r} could not be loaded with weights_only=True ({weights_only_error}); it holds "
            "objects that are not tensors and is not STARK's trainer layout (a dict with 'net').")
    log.info("%s: STARK trainer checkpoint (epoch %s, net_type %s); keeping 'net', ignoring %s",
             path, ckpt.get("epoch"), ckpt.get("net_type"), [k for k in ckpt if k != "net"])
    return {"net": ckpt["net"]}


def _check_complete(path: Path) -> None:
    """An empty or cut-off file (a copy or a download that stopped, a disk that filled) says so, instead of
    failing deep in unpickling with a message about what it holds. torch.save writes a zip archive, whose
    directory is at its end: a zip's first bytes without that directory is a truncated file."""
    import zipfile

    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes): it was not written completely; "
                              "copy or save it again")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupt ({size:,} bytes, its zip "
                              "directory missing): it was not written completely; copy or save it again")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """Either layout: ours as saved, the official one as {'net': state dict}. weights_only=True first; the
    restricted unpickler only for what that refuses, and only a file with 'net' passes it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    _check_complete(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors differ across torch versions
        ckpt = _load_stark(path, exc)
    if isinstance(ckpt, dict) and "net" in ckpt:
        net = ckpt["net"]
        if not isinstance(net, Mapping):
            raise CheckpointError(f"checkpoint {str(path)!r}: 'net' is a {type(net).__name__}, not a state dict")
        for key, value in net.items():
            if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
                raise CheckpointError(f"checkpoint {str(path)!r}: 'net' entry {key!r} is a "
                                      f"{type(value).__name__}, not a tensor")
    return ckpt


def load_official_checkpoint(model: StarkLightning, path: str | os.PathLike, include_head: bool = True,
                             state: dict[str, Any] | None = None) -> None:
    """Loads the official STARK-Lightning weights into `model`.

    With `include_head=False` only the trunk (backbone, bottleneck, positions, encoder) is loaded and the
    official head's keys are ignored: the way to put a new head on the official trunk.
    Any missing, unexpected or mis-shaped key raises a CheckpointError that lists them. `state`: what
    read_checkpoint(path) returned, when the caller has it already."""
    ckpt = read_checkpoint(path) if state is None else state
    if not isinstance(ckpt, dict) or "net" not in ckpt:
        keys = list(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected the official layout with a state dict under 'net'; found {keys}")
    net = {k: v for k, v in ckpt["net"].items() if not k.endswith("num_batches_tracked")}
    names = official_names(model)
    if not include_head:
        names = {ours: theirs for ours, theirs in names.items() if ours.startswith(TRUNK_PREFIXES)}
        net = {k: v for k, v in net.items() if not k.startswith("box_head.")}
    _load_mapped(model, net, names, str(path))


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
        raise CheckpointError(f"{source} does not fit the model; " + "; ".join(p for p in parts if p)
                              + _size_hint(model, state, names))
    model.load_state_dict({key: state[theirs] for key, theirs in names.items()}, strict=False)


def _size_hint(model: nn.Module, state: dict[str, torch.Tensor], names: dict[str, str]) -> str:
    """Position tables of another size mean the checkpoint was trained at other crop sizes: say which."""
    sizes = {}
    for ours, crop in (("template_pos.row_embed.weight", "template_size"), ("search_pos.row_embed.weight",
                                                                             "search_size")):
        theirs = names.get(ours)
        if theirs in state and hasattr(model, "stride"):
            sizes[crop] = state[theirs].shape[0] * model.stride
    if not sizes or all(getattr(model, crop, None) == size for crop, size in sizes.items()):
        return ""
    wanted = " ".join(f"trainer.{crop}={size}" for crop, size in sizes.items())
    return f". The checkpoint was trained at {wanted.replace('trainer.', '')}: set {wanted} (or model.*)"


def save_checkpoint(path: str | os.PathLike, **payload: Any) -> Path:
    """Writes atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads one of this project's checkpoints (a dict with at least `model`, a state dict)."""
    return own_checkpoint(read_checkpoint(path), path)


def own_checkpoint(ckpt: Any, path: str | os.PathLike) -> dict[str, Any]:
    """`ckpt` (what read_checkpoint returned) if it is one of ours, else a CheckpointError."""
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: not a LightTrack checkpoint (no 'model' state dict); for the official "
                              "STARK-Lightning file use load_official_checkpoint")
    return ckpt


def load_trunk(model: StarkLightning, path: str | os.PathLike) -> None:
    """Loads only the trunk (backbone, bottleneck, positions, encoder) from our checkpoint or the official one."""
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict) and "net" in ckpt:
        load_official_checkpoint(model, path, include_head=False, state=ckpt)
        return
    state = own_checkpoint(ckpt, path)["model"]
    trunk = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
    names = {k: k for k in model.state_dict() if k.startswith(TRUNK_PREFIXES) and not k.endswith("num_batches_tracked")}
    _load_mapped(model, {k: v for k, v in trunk.items() if not k.endswith("num_batches_tracked")}, names, str(path))
