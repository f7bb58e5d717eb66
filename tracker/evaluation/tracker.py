"""The online trackers and tracking a list of sequences: STARK-Lightning's inference (`StarkTracker`, one
sequence at a time or several in lockstep; `OnnxStarkTracker`, the same with exported graphs under ONNX
Runtime), the static-box floor (`StaticBoxTracker`), and `run_tracker`, which writes each sequence's
`<sequence>.txt` and measures speed."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.processing import IMAGENET_MEAN, IMAGENET_STD, SEARCH, TEMPLATE, PairProcessing, crop_image, crop_region
from ..deploy import DeployedTracker, TemplateCache
from ..model import StarkLightning
from .results import write_results


class Tracker(Protocol):
    name: str

    def initialize(self, image, box: np.ndarray) -> None: ...

    def update(self, image) -> np.ndarray: ...


def clip_box(box: np.ndarray, height: int, width: int, margin: int = 10) -> np.ndarray:
    """Keeps at least `margin` pixels of the box inside the image (STARK's clip_box)."""
    x1, y1, w, h = box
    x2, y2 = x1 + w, y1 + h
    x1, x2 = min(max(0.0, x1), width - margin), min(max(margin, x2), width)
    y1, y2 = min(max(0.0, y1), height - margin), min(max(margin, y2), height)
    return np.array([x1, y1, max(margin, x2 - x1), max(margin, y2 - y1)])


class StarkTracker:
    """STARK-Lightning's inference: template cached once, search crop around the previous box, the
    prediction mapped back to the image and clipped with a margin. No window, no smoothing. The network runs
    as a `DeployedTracker` (a reparameterised copy computed for speed; the same boxes as `model`). `name`: the
    results folder's and the scores' name."""

    name = "model"
    max_batch: int | None = None  # sequences one network call takes (None: any); track_group splits beyond it

    def __init__(self, model: StarkLightning, device: torch.device, template_factor: float = TEMPLATE.factor,
                 search_factor: float = SEARCH.factor, margin: int = 10, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 name: str | None = None):
        self.model = self._network(model, device)
        self.name = name or self.name
        self.device, self.margin = device, margin
        self.template_factor, self.search_factor = template_factor, search_factor
        self.processing = PairProcessing(mean=mean, std=std)  # training's normalisation (data.processing.mean/std)
        self.model_seconds = 0.0

    def _network(self, model: Any, device: torch.device) -> Any:
        """What runs the network: encode_template, track, template_size, search_size."""
        return DeployedTracker(model, device)

    def _input(self, image, box: np.ndarray, factor: float, size: int):
        cx, cy, side = crop_region(box, factor)
        crop, mask, geometry = crop_image(image, cx, cy, side, size)
        pixels = self.processing.to_tensor(np.asarray(crop))[None].to(self.device, non_blocking=True)
        return pixels, torch.from_numpy(mask)[None].to(self.device, non_blocking=True), geometry

    def _encode(self, images: list, boxes: list) -> Any:
        """The templates of several sequences (one per image and first box), encoded in one call."""
        inputs = [self._input(im, box, self.template_factor, self.model.template_size) for im, box in zip(images, boxes)]
        return self.model.encode_template(torch.cat([p for p, _, _ in inputs]), torch.cat([m for _, m, _ in inputs]))

    def _step(self, images: list, boxes: list, template: Any) -> list[np.ndarray]:
        """One frame of several sequences in one network call: the search crop around each previous box, the
        predictions mapped back to each image and clipped (a batch of one is the online tracker)."""
        inputs = [self._input(im, box, self.search_factor, self.model.search_size) for im, box in zip(images, boxes)]
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        started = time.perf_counter()
        predicted = self.model.track(torch.cat([p for p, _, _ in inputs]), torch.cat([m for _, m, _ in inputs]),
                                     template)["boxes"].float().cpu().numpy()
        sync()
        self.model_seconds += time.perf_counter() - started
        out = []
        for (cx, cy, w, h), (_, _, crop), image in zip(predicted, inputs, images):
            box = crop.box_to_image([cx - 0.5 * w, cy - 0.5 * h, w, h])
            out.append(clip_box(box, image.height, image.width, self.margin))
        return out

    @torch.no_grad()
    def initialize(self, image, box: np.ndarray) -> None:
        self.template = self._encode([image], [box])
        self.box = np.asarray(box, dtype=np.float64)

    @torch.no_grad()
    def update(self, image) -> np.ndarray:
        self.box = self._step([image], [self.box], self.template)[0]
        return self.box

    @torch.no_grad()
    def track_group(self, sequences: list) -> list[np.ndarray]:
        """Several sequences in lockstep, one network call per frame for all that are still running: the same
        per-sequence tracker as initialize/update, batched for throughput (boxes equal up to float rounding).
        A network that takes at most `max_batch` sequences gets them in groups of that many (batch 1: one
        sequence at a time, the online tracker's own calls)."""
        if self.max_batch is not None and len(sequences) > self.max_batch:
            return [boxes for i in range(0, len(sequences), self.max_batch)
                    for boxes in self.track_group(sequences[i:i + self.max_batch])]
        boxes = [np.empty((len(s.frames), 4)) for s in sequences]
        state = [np.asarray(s.boxes[0], dtype=np.float64) for s in sequences]
        template = self._encode([s.image(0) for s in sequences], state)
        for k, s in enumerate(sequences):
            boxes[k][0] = s.boxes[0]
        for i in range(1, max(len(s.frames) for s in sequences)):
            active = [k for k, s in enumerate(sequences) if i < len(s.frames)]
            cache = template if len(active) == len(sequences) else \
                TemplateCache(*(t[active] for t in template))
            for k, box in zip(active, self._step([sequences[k].image(i) for k in active], [state[k] for k in active],
                                                 cache)):
                state[k] = boxes[k][i] = box
        return boxes


class OnnxStarkTracker(StarkTracker):
    """`StarkTracker` with exported graphs as its network: a `tracker.export.OnnxTracker` (FP32 or INT8) on the
    CPU. Its graphs take batch 1, so lockstep tracking runs one sequence at a time (the same boxes)."""

    name = "onnx"
    max_batch = 1

    def __init__(self, network: Any, template_factor: float = TEMPLATE.factor, search_factor: float = SEARCH.factor,
                 margin: int = 10, mean=IMAGENET_MEAN, std=IMAGENET_STD, name: str | None = None):
        super().__init__(network, torch.device("cpu"), template_factor, search_factor, margin, mean, std, name)

    def _network(self, model: Any, device: torch.device) -> Any:
        return model


class StaticBoxTracker:
    """Returns the first box for every frame: the floor a learned tracker must clear. It never looks at a frame,
    so none is decoded for it (`reads_images`)."""

    name = "static"
    model_seconds = 0.0
    reads_images = False

    def initialize(self, image, box: np.ndarray) -> None:
        self.box = np.asarray(box, dtype=np.float64)

    def update(self, image) -> np.ndarray:
        return self.box


def track_sequence(tracker: Tracker, sequence) -> np.ndarray:
    """Runs one sequence from the ground-truth box of frame 0; returns (N, 4) boxes, frame 0's being that box."""
    boxes = np.empty((len(sequence.frames), 4))
    boxes[0] = sequence.boxes[0]
    image = sequence.image if getattr(tracker, "reads_images", True) else (lambda i: None)
    tracker.initialize(image(0), sequence.boxes[0])
    for i in range(1, len(sequence.frames)):
        boxes[i] = tracker.update(image(i))
    return boxes


def run_tracker(tracker: Tracker, sequences: list, results_dir: Path, progress: bool = True,
                batch: int = 1) -> dict[str, Any]:
    """Tracks every sequence, writes `<sequence>.txt`, returns predictions and speed. `batch` > 1 tracks that
    many sequences in lockstep when the tracker can (`track_group`): fps is then throughput, not latency."""
    predictions, frames, started = {}, 0, time.perf_counter()
    tracker.model_seconds = 0.0
    step = batch if batch > 1 and hasattr(tracker, "track_group") else 1
    groups = [sequences[i:i + step] for i in range(0, len(sequences), step)]
    with tqdm(total=len(sequences), desc=f"tracking ({tracker.name})", unit="seq", disable=not progress,
              leave=False) as bar:
        for group in groups:
            results = tracker.track_group(group) if step > 1 else [track_sequence(tracker, group[0])]
            for sequence, boxes in zip(group, results):
                predictions[sequence.name] = boxes
                write_results(results_dir, sequence.name, boxes)
                frames += len(sequence.frames) - 1
            bar.update(len(group))
    seconds = time.perf_counter() - started
    speed = {"fps": frames / seconds if seconds else math.inf,
             "model_fps": frames / tracker.model_seconds if tracker.model_seconds else None}
    return {"predictions": predictions, "speed": speed}
