"""The `data` config group's schema, and what builds readers, pair datasets and loaders from it.

A data config names the dataset a tracker is evaluated on (`name`, `root`, `split`) and the training
mixture (`sources`; when empty, the same dataset's `train_split`). Roots come from the config or from an
environment variable the presets read (GOT10K_ROOT, LASOT_ROOT, TRACKINGNET_ROOT, COCO_ROOT); the
synthetic benchmark's root defaults to a generated cache under `cache_dir` (LIGHTTRACK_DATA_CACHE).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from .base import TrackingDataset
from .coco import COCO
from .got10k import GOT10k
from .lasot import LaSOT
from .processing import IMAGENET_MEAN, IMAGENET_STD, CropSettings, PairProcessing
from .sampler import PairDataset, make_loader
from .synthetic import SyntheticConfig, ensure_synthetic
from .trackingnet import TrackingNet

READERS: dict[str, type[TrackingDataset]] = {
    "synthetic": GOT10k,  # the embedded benchmark is written in GOT-10k's layout
    "got10k": GOT10k,
    "lasot": LaSOT,
    "trackingnet": TrackingNet,
    "coco": COCO,
}
ROOT_VARIABLES = {"synthetic": "LIGHTTRACK_SYNTHETIC_ROOT", "got10k": "GOT10K_ROOT", "lasot": "LASOT_ROOT",
                  "trackingnet": "TRACKINGNET_ROOT", "coco": "COCO_ROOT"}


class DataConfigError(ValueError):
    pass


def _bad(field: str, value: Any, allowed: str) -> DataConfigError:
    return DataConfigError(f"data.{field}={value} is not allowed: {allowed}")


@dataclass
class SourceConf:
    """One dataset of the training mixture."""

    name: str = "got10k"  # reader: synthetic, got10k, lasot, trackingnet, coco
    root: Optional[str] = None
    split: str = "train"
    seq_list: Optional[str] = None  # a file of sequence names or ids narrowing the split
    ratio: float = 1.0  # relative sampling weight
    chunks: Optional[List[int]] = None  # trackingnet: TRAIN_<k> chunks (default: all)


@dataclass
class SamplingConf:
    pairs_per_epoch: int = 60000
    max_gap: int = 200  # template and search at most this many frames apart
    seed: int = 0


@dataclass
class CropConf:
    size: int = 320
    factor: float = 5.0  # crop side = ceil(sqrt(w * h) * factor)
    scale_jitter: float = 0.0
    center_jitter: float = 0.0


@dataclass
class ProcessingConf:
    template: CropConf = field(default_factory=lambda: CropConf(128, 2.0, 0.0, 0.0))
    search: CropConf = field(default_factory=lambda: CropConf(320, 5.0, 0.5, 4.5))
    grayscale: float = 0.05
    flip: float = 0.5
    brightness: float = 0.2
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class LoaderConf:
    batch_size: int = 16
    num_workers: int = 2


@dataclass
class DataConf:
    name: str = "synthetic"  # the dataset tracked and scored
    root: Optional[str] = None
    split: str = "val"
    seq_list: Optional[str] = None
    train_split: str = "train"  # training split of the same dataset, when `sources` is empty
    train_seq_list: Optional[str] = None
    sources: Dict[str, SourceConf] = field(default_factory=dict)
    cache_dir: str = "runs/data"
    generate: Optional[SyntheticConfig] = None  # synthetic only: what to generate
    sampling: SamplingConf = field(default_factory=SamplingConf)
    processing: ProcessingConf = field(default_factory=ProcessingConf)
    loader: LoaderConf = field(default_factory=LoaderConf)

    def __post_init__(self) -> None:
        allowed = f"one of {sorted(READERS)}"
        if self.name not in READERS:
            raise _bad("name", self.name, allowed)
        for key, source in self.sources.items():
            if source.name not in READERS:
                raise _bad(f"sources.{key}.name", source.name, allowed)
            if source.ratio < 0:
                raise _bad(f"sources.{key}.ratio", source.ratio, ">= 0")
        if self.sources and not any(s.ratio > 0 for s in self.sources.values()):
            raise _bad("sources", "(all ratios 0)", "at least one source with a positive ratio")
        for key in ("pairs_per_epoch", "max_gap"):
            if getattr(self.sampling, key) < 1:
                raise _bad(f"sampling.{key}", getattr(self.sampling, key), ">= 1")
        for key in ("template", "search"):
            crop: CropConf = getattr(self.processing, key)
            if crop.size < 1 or crop.factor <= 0 or crop.scale_jitter < 0 or crop.center_jitter < 0:
                raise _bad(f"processing.{key}", crop, "size >= 1, factor > 0, jitters >= 0")
        for key in ("grayscale", "flip"):
            if not 0 <= getattr(self.processing, key) <= 1:
                raise _bad(f"processing.{key}", getattr(self.processing, key), "a probability in [0, 1]")
        if not 0 <= self.processing.brightness < 1:
            raise _bad("processing.brightness", self.processing.brightness, "in [0, 1)")
        if len(self.processing.mean) != 3 or len(self.processing.std) != 3 or min(self.processing.std) <= 0:
            raise _bad("processing.mean/std", (self.processing.mean, self.processing.std), "3 values, std > 0")
        if self.loader.batch_size < 1 or self.loader.num_workers < 0:
            raise _bad("loader", self.loader, "batch_size >= 1, num_workers >= 0")


def to_data_conf(cfg: Any) -> DataConf:
    """A DataConf from a DataConf, a DictConfig (the composed `data` node) or a plain dict."""
    if isinstance(cfg, DataConf):
        return cfg
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):  # resolve in place first: interpolations may point outside `data`
        cfg = OmegaConf.to_container(cfg, resolve=True)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConf), cfg))


def resolve_root(name: str, root: str | None, data: DataConf, progress: bool = True) -> Path:
    """A dataset's root: as given, else (synthetic only) the generated benchmark, built on first use."""
    if name == "synthetic":
        generate = data.generate or SyntheticConfig()
        if root:
            generate = replace(generate, root=str(root))
        return ensure_synthetic(generate, data.cache_dir, progress)
    if not root:
        raise DataConfigError(f"no root for {name}: pass data.root=DIR (or the source's root) or set "
                              f"{ROOT_VARIABLES[name]}; expected the layout {READERS[name].layout}")
    return Path(root)


def _reader(name: str, root: str | None, split: str, seq_list: str | None, data: DataConf,
            chunks: list[int] | None = None) -> TrackingDataset:
    kwargs: dict[str, Any] = {"split": split, "seq_list": seq_list}
    if name == "trackingnet" and chunks is not None:
        kwargs["chunks"] = chunks
    reader = READERS[name](resolve_root(name, root, data), **kwargs)
    if name == "synthetic":
        reader.name = "synthetic"
    return reader


def build_reader(cfg: Any, split: str | None = None) -> TrackingDataset:
    """The reader of the dataset a tracker is evaluated on (`data.split`, or `split`)."""
    data = to_data_conf(cfg)
    return _reader(data.name, data.root, split or data.split, data.seq_list, data)


def build_sources(cfg: Any) -> list[tuple[TrackingDataset, float]]:
    data = to_data_conf(cfg)
    if not data.sources:
        return [(_reader(data.name, data.root, data.train_split, data.train_seq_list, data), 1.0)]
    return [(_reader(s.name, s.root, s.split, s.seq_list, data, s.chunks), s.ratio)
            for s in data.sources.values() if s.ratio > 0]


def build_processing(cfg: Any) -> PairProcessing:
    p = to_data_conf(cfg).processing
    crops = [CropSettings(c.size, c.factor, c.scale_jitter, c.center_jitter) for c in (p.template, p.search)]
    return PairProcessing(*crops, grayscale=p.grayscale, flip=p.flip, brightness=p.brightness, mean=p.mean, std=p.std)


def build_pair_dataset(cfg: Any) -> PairDataset:
    data = to_data_conf(cfg)
    s = data.sampling
    return PairDataset(build_sources(data), build_processing(data), s.pairs_per_epoch, s.max_gap, s.seed)


def build_train_loader(cfg: Any, device: Any = None, epoch: int = 0):
    """The training DataLoader a data config describes (see `make_loader`)."""
    return build_pair_loader(cfg, "train", device=device, epoch=epoch)


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def build_pair_loader(cfg: Any, split: str = "train", template_size: int | None = None,
                      search_size: int | None = None, pairs_per_epoch: int | None = None,
                      batch_size: int | None = None, num_workers: int | None = None, seed: int | None = None,
                      device: Any = None, epoch: int = 0, center_jitter: float | None = None,
                      scale_jitter: float | None = None):
    """A DataLoader of processed pairs. `split="train"`: the training mixture (`sources`, else
    `train_split`), last partial batch dropped; any other split: pairs from that split of the evaluated
    dataset (`data.split` when "val" is asked), every pair kept. Arguments given override the config."""
    data = to_data_conf(cfg)
    p, s, loader = data.processing, data.sampling, data.loader
    data = replace(
        data,
        processing=replace(p, template=replace(p.template, size=template_size or p.template.size),
                           search=replace(p.search, size=search_size or p.search.size,
                                          center_jitter=_given(center_jitter, p.search.center_jitter),
                                          scale_jitter=_given(scale_jitter, p.search.scale_jitter))),
        sampling=replace(s, pairs_per_epoch=pairs_per_epoch or s.pairs_per_epoch,
                         seed=_given(seed, s.seed)),
        loader=replace(loader, batch_size=batch_size or loader.batch_size,
                       num_workers=_given(num_workers, loader.num_workers)))
    if split == "train":
        dataset = build_pair_dataset(data)
    else:
        reader = build_reader(data, data.split if split == "val" else split)
        dataset = PairDataset([(reader, 1.0)], build_processing(data), data.sampling.pairs_per_epoch,
                              data.sampling.max_gap, data.sampling.seed)
    return make_loader(dataset, data.loader.batch_size, data.loader.num_workers, device, epoch,
                       drop_last=split == "train")
