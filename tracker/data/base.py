"""The interface every dataset reader shares, the registry of readers by name (`register_reader`), and the file
parsing they have in common.

A reader lists sequence names and returns a `Sequence`: frame paths, boxes (x, y, w, h in pixels) and a
visibility flag per frame. Annotations are parsed lazily, one sequence at a time, and cached.
"""
from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Sequence as Seq, TypeVar

import numpy as np
from PIL import Image


class DatasetError(Exception):
    """A dataset on disk is missing or does not match the layout a reader expects."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    pass


class AnnotationError(DatasetError, ValueError):
    pass


class FrameMissingError(DatasetError, FileNotFoundError):
    pass


class FrameUnreadableError(DatasetError, OSError):
    """A frame file that exists but does not decode (truncated, not an image)."""


class FramePaths(Seq[Path]):
    """Frame paths from a directory and a numbered pattern, built on access (big datasets hold
    millions of frames; a Path object per frame would cost gigabytes)."""

    def __init__(self, directory: Path, pattern: str, count: int, start: int = 1):
        self.directory, self.pattern, self.count, self.start = Path(directory), pattern, count, start

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if index < 0:
            index += self.count
        if not 0 <= index < self.count:
            raise IndexError(f"frame {index} of {self.count}")
        return self.directory / self.pattern.format(index + self.start)

    def __repr__(self) -> str:
        return f"FramePaths({str(self.directory)!r}, {self.pattern!r}, count={self.count}, start={self.start})"


@dataclass(frozen=True, eq=False)
class Sequence:
    """One annotated video (or one image, for static datasets such as COCO)."""

    name: str
    frames: Seq[Path]  # FramePaths, or a list of paths
    boxes: np.ndarray  # (N, 4) float64, x, y, w, h in pixels; NaN where the frame has no annotation
    visible: np.ndarray  # (N,) bool: the target is in view and its box is valid
    dataset: str = ""
    annotation: Path | None = None  # the file the boxes come from, named in errors

    def __len__(self) -> int:
        return len(self.frames)

    def image(self, index: int) -> Image.Image:
        return load_image(self.frames[index])


def load_image(path: str | Path) -> Image.Image:
    """An RGB image; a missing file raises FrameMissingError, one that does not decode FrameUnreadableError,
    both naming it (PIL's own errors name no file)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FrameMissingError(f"frame {path} is missing") from None
    except OSError as error:
        raise FrameUnreadableError(f"frame {path} cannot be decoded: {error}") from None


def valid_boxes(boxes: np.ndarray) -> np.ndarray:
    """True where a box is finite with positive width and height."""
    return np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)


_SEPARATORS = re.compile(r"[,\s]+")


def read_boxes(path: Path) -> np.ndarray:
    """Parses a box file: one `x,y,w,h` line per frame (comma, tab or space separated; NaN allowed).

    A malformed line raises AnnotationError with the file and the 1-based line number."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AnnotationError(f"annotation file {path} is missing") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = _SEPARATORS.split(line)
        try:
            if len(fields) != 4:
                raise ValueError
            rows.append([float(f) for f in fields])
        except ValueError:
            raise AnnotationError(f"{path}, line {number}: expected 4 numbers x,y,w,h, got {line!r}") from None
    if not rows:
        raise AnnotationError(f"{path} has no boxes")
    return np.asarray(rows, dtype=np.float64)


def read_flags(path: Path, count: int) -> np.ndarray:
    """Reads `count` integer flags (one per line, or one comma-separated line), naming the file on error."""
    fields = [f for f in _SEPARATORS.split(path.read_text().strip()) if f]
    try:
        flags = np.asarray([int(float(f)) for f in fields], dtype=np.int64)
    except ValueError:
        raise AnnotationError(f"{path}: expected integer flags, got {path.read_text()[:60]!r}") from None
    if len(flags) != count:
        raise AnnotationError(f"{path}: {len(flags)} flags for {count} frames")
    return flags


def count_frames(directory: Path, suffix: str = ".jpg") -> int:
    """How many `suffix` files a frame directory holds (0 when it is missing)."""
    try:
        return sum(1 for entry in os.scandir(directory) if entry.name.endswith(suffix))
    except FileNotFoundError:
        return 0


def box_count_error(annotation: Path, boxes: int, frames: int, directory: Path) -> AnnotationError:
    return AnnotationError(f"{annotation}: {boxes} boxes for {frames} frames in {directory}")


def read_labels(path: Path, boxes: np.ndarray, annotation: Path, frame_dir: Path) -> np.ndarray:
    """`read_flags` for a label file beside a box file. When the counts disagree and the box file is the one
    that does not match the frames on disk, the error names the box file: a short groundtruth is not the
    label file's fault."""
    try:
        return read_flags(path, len(boxes))
    except AnnotationError:
        frames = count_frames(frame_dir)
        if frames != len(boxes):
            raise box_count_error(annotation, len(boxes), frames, frame_dir) from None
        raise


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class TrackingDataset:
    """Base class of the readers. Subclasses set `name`, fill `self._names` and implement `_load(index)`."""

    name: ClassVar[str] = ""
    is_video: ClassVar[bool] = True  # False: each sequence is one still image (template and search alike)
    layout: ClassVar[str] = ""  # the on-disk layout, quoted in errors
    splits: ClassVar[tuple[str, ...] | None] = None  # the `split` values it reads; None: any (checked on disk)

    def __init__(self, root: str | Path):
        if root is None or str(root) in ("", "None"):
            raise DatasetNotFoundError(f"{self.name}: no root given; expected the layout {self.layout}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DatasetNotFoundError(f"{self.name}: root {self.root} does not exist; expected the layout "
                                       f"{self.layout}")
        self._names: list[str] = []
        self._index: dict[str, int] = {}

    def _require(self, path: Path, what: str) -> Path:
        if not path.exists():
            raise DatasetNotFoundError(f"{self.name}: {what} {path} is missing; expected the layout {self.layout}")
        return path

    def _set_names(self, names: list[str]) -> None:
        self._names = list(names)
        self._index = {n: i for i, n in enumerate(self._names)}

    def sequence_names(self) -> list[str]:
        return list(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def sequence(self, key: int | str) -> Sequence:
        """A sequence by index or name (annotations are parsed on first use, then cached)."""
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"{self.name}: no sequence named {key!r} under {self.root}")
            key = self._index[key]
        return self._cached(int(key))

    @functools.lru_cache(maxsize=1024)  # shared by all readers; a sequence is cheap to parse again
    def _cached(self, index: int) -> Sequence:
        return self._load(index)

    def _load(self, index: int) -> Sequence:
        raise NotImplementedError

    def __iter__(self):
        return (self.sequence(i) for i in range(len(self)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, sequences={len(self)})"


# ----------------------------------------------------------------------------------------- reader registry

_Reader = TypeVar("_Reader", bound=type[TrackingDataset])
_READERS: dict[str, type[TrackingDataset]] = {}  # data.name -> reader class
ROOT_VARIABLES: dict[str, str] = {}  # data.name -> the environment variable the presets read its root from


def register_reader(name: str, *, root_variable: str) -> Callable[[_Reader], _Reader]:
    """Class decorator: the reader a data config's `name` (and a source's) selects. A reader module of this
    package needs no import elsewhere (see `registered_readers`); one elsewhere registers when its module is
    imported, before a config is composed. One class may be registered under several names."""

    def add(cls: _Reader) -> _Reader:
        if _READERS.get(name, cls) is not cls:
            raise ValueError(f"dataset reader {name!r} is already registered as {_READERS[name].__name__}")
        _READERS[name], ROOT_VARIABLES[name] = cls, root_variable
        return cls

    return add


@functools.cache
def _import_package_readers() -> None:
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__package__}.{module.name}")


def registered_readers() -> dict[str, type[TrackingDataset]]:
    """The live registry, name -> reader class: every module of this package imported first (once), so that
    its readers are in, then whatever else registered so far."""
    _import_package_readers()
    return _READERS


def __getattr__(name: str):
    if name == "READERS":  # the registry, complete (`registered_readers`)
        return registered_readers()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def select_sequences(names: list[str], seq_list: str | Path | None, dataset: str) -> list[str]:
    """Restricts `names` to a list file: one name per line, or integer ids (0-based indices into
    `names`, STARK's convention for its GOT-10k vot-train / vot-val files)."""
    if seq_list is None:
        return names
    path = Path(seq_list).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"{dataset}: sequence list {path} is missing")
    entries = read_lines(path)
    if entries and all(e.lstrip("-").isdigit() for e in entries):
        ids = [int(e) for e in entries]
        bad = [i for i in ids if not 0 <= i < len(names)]
        if bad:
            raise AnnotationError(f"{path}: ids {bad[:5]} are outside 0..{len(names) - 1}")
        return [names[i] for i in ids]
    known = set(names)
    missing = [e for e in entries if e not in known]
    if missing:
        raise AnnotationError(f"{path}: sequences {missing[:5]} are not in {dataset}")
    return entries
