"""Data: the embedded synthetic benchmark, readers for GOT-10k, LaSOT, TrackingNet and COCO, and STARK's
pair sampling and processing. Needs no model code.

Names are imported on first use, so that `python -m tracker.data.synthetic` runs its module once."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "base": ("READERS", "ROOT_VARIABLES", "AnnotationError", "DatasetError", "DatasetNotFoundError",
             "FrameMissingError", "FramePaths", "FrameUnreadableError", "Sequence", "TrackingDataset", "load_image",
             "register_reader", "registered_readers"),
    "check": ("check_dataset",),
    "coco": ("COCO",),
    "config": ("DataConf", "DataConfigError", "build_pair_dataset", "build_pair_loader", "build_processing",
               "build_reader", "build_sources", "build_train_loader", "check_data", "pairs_key", "resolve_root",
               "to_data_conf", "with_crops"),
    "got10k": ("GOT10k",),
    "lasot": ("LaSOT",),
    "processing": ("Crop", "CropConf", "PairProcessing", "crop_image", "crop_region"),
    "sampler": ("EpochSampler", "PairDataset", "make_loader", "sample_frame_pair"),
    "synthetic": ("SyntheticConfig", "ensure_synthetic"),
    "trackingnet": ("TrackingNet",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
