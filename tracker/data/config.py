"""The `data` config group's schema, and what builds readers, pair datasets and loaders from it.

A data config names the dataset a tracker is evaluated on (`name`, `root`, `split`) and the training
mixture (`sources`; when empty, the same dataset's `train_split`). Roots come from the config or from an
environment variable the presets read (GOT10K_ROOT, LASOT_ROOT, TRACKINGNET_ROOT, COCO_ROOT); the
synthetic benchmark's root defaults to a generated cache under `cache_dir` (LIGHTTRACK_DATA_CACHE).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import not_allowed
from .base import ROOT_VARIABLES, TrackingDataset, registered_readers
from .check import CHECK_SECONDS, check_dataset
from .processing import IMAGENET_MEAN, IMAGENET_STD, SEARCH, TEMPLATE, CropConf, PairProcessing
from .sampler import PairDataset, make_loader
from .synthetic import SyntheticConfig, ensure_synthetic

SYNTHETIC_SPLITS = ("train", "val")  # what the generator writes


class DataConfigError(ValueError):
    pass


def _bad(field: str, value: Any, allowed: str) -> ValueError:
    return not_allowed(f"data.{field}", value, allowed, DataConfigError)


@dataclass
class SourceConf:
    """One dataset of the training mixture."""

    name: str = "got10k"  # a registered reader (base.register_reader): synthetic, got10k, lasot, trackingnet, coco
    root: Optional[str] = None
    split: str = "train"
    seq_list: Optional[str] = None  # a file of sequence names or ids narrowing the split
    ratio: float = 1.0  # relative sampling weight
    chunks: Optional[List[int]] = None  # trackingnet: TRAIN_<k> chunks (default: all)


@dataclass
class SamplingConf:
    """How pairs are drawn. Their number per epoch, the seed, the batch size and the loader's workers belong to
    the trainer's recipe (trainer.pairs_per_epoch, seed, batch_size, num_workers), which passes them to
    `build_pair_loader`: a trunk and the head trials on it draw different counts from the same data."""

    max_gap: int = 200  # template and search at most this many frames apart


@dataclass
class ProcessingConf:
    template: CropConf = field(default_factory=lambda: replace(TEMPLATE))
    search: CropConf = field(default_factory=lambda: replace(SEARCH))
    grayscale: float = 0.05
    flip: float = 0.5
    brightness: float = 0.2
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))


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
    generate: SyntheticConfig = field(default_factory=SyntheticConfig)  # synthetic only: what to generate
    sampling: SamplingConf = field(default_factory=SamplingConf)
    processing: ProcessingConf = field(default_factory=ProcessingConf)

    def __post_init__(self) -> None:
        readers = registered_readers()  # looked up now: a reader registered after this module was imported counts
        allowed = f"one of {sorted(readers)}"
        if self.name not in readers:
            raise _bad("name", self.name, allowed)
        for key, source in self.sources.items():
            if source.name not in readers:
                raise _bad(f"sources.{key}.name", source.name, allowed)
            if source.ratio < 0:
                raise _bad(f"sources.{key}.ratio", source.ratio, ">= 0")
        if self.sources and not any(s.ratio > 0 for s in self.sources.values()):
            raise _bad("sources", "(all ratios 0)", "at least one source with a positive ratio")
        self._check_splits()
        self._check_generate()
        if self.sampling.max_gap < 1:
            raise _bad("sampling.max_gap", self.sampling.max_gap, ">= 1")
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

    def readers(self) -> dict[str, tuple[str, str]]:
        """Every reader this config opens: config key of its split -> (dataset name, split)."""
        train = ({f"sources.{k}.split": (s.name, s.split) for k, s in self.sources.items()} if self.sources
                 else {"train_split": (self.name, self.train_split)})
        return {"split": (self.name, self.split), **train}

    def _check_splits(self) -> None:
        """A split the reader does not offer fails here, not after a whole training."""
        for key, (name, split) in self.readers().items():
            allowed = SYNTHETIC_SPLITS if name == "synthetic" else registered_readers()[name].splits
            if allowed is not None and split not in allowed:
                raise _bad(key, split, f"one of {list(allowed)}, the splits the {name} reader offers")

    def _check_generate(self) -> None:
        """`generate` drives the synthetic generator: set on data without a synthetic reader it would be
        ignored (and a `data.generate.*` override on such a preset would otherwise fail naming no key)."""
        if any(name == "synthetic" for name, _ in self.readers().values()):
            return
        default = SyntheticConfig()
        changed = [f.name for f in fields(SyntheticConfig)
                   if getattr(self.generate, f.name) != getattr(default, f.name)]
        if changed:
            raise _bad(f"generate.{changed[0]}", getattr(self.generate, changed[0]),
                       f"data.generate configures the synthetic generator and data.name={self.name} reads none "
                       f"(no source is synthetic either)")


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
        generate = data.generate
        if root:
            generate = replace(generate, root=str(root))
        return ensure_synthetic(generate, data.cache_dir, progress)
    if not root:
        layout = registered_readers()[name].layout
        raise DataConfigError(f"no root for {name}: pass data.root=DIR (or the source's root) or set "
                              f"{ROOT_VARIABLES[name]}; expected the layout {layout}")
    return Path(root)


def _reader(name: str, root: str | None, split: str, seq_list: str | None, data: DataConf,
            chunks: list[int] | None = None) -> TrackingDataset:
    kwargs: dict[str, Any] = {"split": split, "seq_list": seq_list}
    if name == "trackingnet" and chunks is not None:
        kwargs["chunks"] = chunks
    reader = registered_readers()[name](resolve_root(name, root, data), **kwargs)
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
    return PairProcessing(p.template, p.search, grayscale=p.grayscale, flip=p.flip, brightness=p.brightness,
                          mean=p.mean, std=p.std)


def build_pair_dataset(cfg: Any, pairs_per_epoch: int = 60000, seed: int = 0) -> PairDataset:
    data = to_data_conf(cfg)
    return PairDataset(build_sources(data), build_processing(data), pairs_per_epoch, data.sampling.max_gap, seed)


def build_train_loader(cfg: Any, device: Any = None, epoch: int = 0, **kwargs: Any):
    """The training DataLoader a data config describes (see `build_pair_loader`, `make_loader`)."""
    return build_pair_loader(cfg, "train", device=device, epoch=epoch, **kwargs)


def _given(value: Any, default: Any) -> Any:
    return default if value is None else value


def with_crops(cfg: Any, template_size: int | None = None, search_size: int | None = None,
               center_jitter: float | None = None, scale_jitter: float | None = None) -> DataConf:
    """The data config with the caller's crop sizes and search jitter (the trainer's) in place of its own;
    None keeps the config's."""
    data = to_data_conf(cfg)
    p = data.processing
    return replace(data, processing=replace(
        p, template=replace(p.template, size=template_size or p.template.size),
        search=replace(p.search, size=search_size or p.search.size,
                       center_jitter=_given(center_jitter, p.search.center_jitter),
                       scale_jitter=_given(scale_jitter, p.search.scale_jitter))))


def _split_readers(data: DataConf, split: str) -> list[dict[str, Any]]:
    if split != "train":
        return [dict(name=data.name, root=data.root, split=data.split if split == "val" else split,
                     seq_list=data.seq_list)]
    if not data.sources:
        return [dict(name=data.name, root=data.root, split=data.train_split, seq_list=data.train_seq_list)]
    return [asdict(s) for s in data.sources.values() if s.ratio > 0]


def pairs_key(cfg: Any, split: str = "train") -> dict[str, Any]:
    """What decides the pairs `build_pair_loader(cfg, split)` draws, and nothing else: the data part of the
    cache key of what is computed from them (trunks, trunk features). The other split's readers, where the
    data is cached (`cache_dir`) and the generator's process count do not change the pairs, so a change of
    them must not invalidate a cache."""
    data = to_data_conf(cfg)
    readers = _split_readers(data, split)
    synthetic = any(r["name"] == "synthetic" for r in readers)
    return {"readers": readers, "generate": data.generate.content() if synthetic else None,
            "sampling": asdict(data.sampling), "processing": asdict(data.processing)}


def check_data(cfg: Any, train: bool = True, evaluation: bool = True, budget: float = CHECK_SECONDS) -> None:
    """Checks the data a run reads before it trains or tracks (see `check_dataset`): the training readers, and
    the evaluated split, whose first boxes the tracker starts from. A data set that passed is remembered under
    `cache_dir/checks/`."""
    data = to_data_conf(cfg)
    readers = [(reader, False) for reader, _ in build_sources(data)] if train else []
    if evaluation:
        readers.append((build_reader(data), True))
    for reader, first_boxes in readers:
        check_dataset(reader, first_boxes, budget, Path(data.cache_dir) / "checks")


def build_pair_loader(cfg: Any, split: str = "train", template_size: int | None = None,
                      search_size: int | None = None, pairs_per_epoch: int = 60000, batch_size: int = 16,
                      num_workers: int = 0, seed: int = 0, device: Any = None, epoch: int = 0,
                      center_jitter: float | None = None, scale_jitter: float | None = None, rank: int = 0,
                      world_size: int = 1):
    """A DataLoader of processed pairs. `split="train"`: the training mixture (`sources`, else
    `train_split`), last partial batch dropped; any other split: pairs from that split of the evaluated
    dataset (`data.split` when "val" is asked), every pair kept. Crop sizes and jitter given override the
    config's; the counts, the seed and the workers are the caller's (the trainer's recipe). `world_size` > 1
    (training under torchrun): `batch_size` is the global batch and the loader is rank `rank`'s share of it
    (`make_loader`)."""
    data = with_crops(cfg, template_size, search_size, center_jitter, scale_jitter)
    if split == "train":
        dataset = build_pair_dataset(data, pairs_per_epoch, seed)
    else:
        reader = build_reader(data, data.split if split == "val" else split)
        dataset = PairDataset([(reader, 1.0)], build_processing(data), pairs_per_epoch, data.sampling.max_gap, seed)
    return make_loader(dataset, batch_size, num_workers, device, epoch, drop_last=split == "train", rank=rank,
                       world_size=world_size)
