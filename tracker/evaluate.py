"""The online tracker and one-pass evaluation.

`python -m tracker.evaluate checkpoint=PATH data=got10k data.root=DIR data.split=val` tracks every
sequence, writes `<sequence>.txt` (x,y,w,h per line) per tracker, measures speed, scores the results, and
prints the metrics as one JSON object on its last stdout line. A static-box tracker (the first box
forever) is scored beside every model so each report shows the trivial floor.
"""
from __future__ import annotations

import math
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm


from .data.processing import IMAGENET_MEAN, IMAGENET_STD, PairProcessing, crop_image, crop_region
from .deploy import DeployedTracker
from .io import atomic_write_text
from .model import StarkLightning

log = logging.getLogger(__name__)


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
    as a `DeployedTracker` (a reparameterised copy computed for speed; the same boxes as `model`)."""

    name = "model"

    def __init__(self, model: StarkLightning, device: torch.device, template_factor: float = 2.0,
                 search_factor: float = 5.0, margin: int = 10, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.model = DeployedTracker(model, device)
        self.device, self.margin = device, margin
        self.template_factor, self.search_factor = template_factor, search_factor
        self.processing = PairProcessing(mean=mean, std=std)  # training's normalisation (data.processing.mean/std)
        self.model_seconds = 0.0

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
        per-sequence tracker as initialize/update, batched for throughput (boxes equal up to float rounding)."""
        from .deploy import TemplateCache

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


class StaticBoxTracker:
    """Returns the first box for every frame: the floor a learned tracker must clear."""

    name = "static"
    model_seconds = 0.0

    def initialize(self, image, box: np.ndarray) -> None:
        self.box = np.asarray(box, dtype=np.float64)

    def update(self, image) -> np.ndarray:
        return self.box


def track_sequence(tracker: Tracker, sequence) -> np.ndarray:
    """Runs one sequence from the ground-truth box of frame 0; returns (N, 4) boxes, frame 0's being that box."""
    boxes = np.empty((len(sequence.frames), 4))
    boxes[0] = sequence.boxes[0]
    tracker.initialize(sequence.image(0), sequence.boxes[0])
    for i in range(1, len(sequence.frames)):
        boxes[i] = tracker.update(sequence.image(i))
    return boxes


def run_tracker(tracker: Tracker, sequences: list, results_dir: Path, progress: bool = True,
                batch: int = 1) -> dict[str, Any]:
    """Tracks every sequence, writes `<sequence>.txt`, returns predictions and speed. `batch` > 1 tracks that
    many sequences in lockstep when the tracker can (`track_group`): fps is then throughput, not latency."""
    from .metrics import write_results

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


def scores_dir(out_dir: str | Path) -> Path:
    """Where evaluate_model puts plots and per-sequence scores under its `out_dir` (a run directory)."""
    return Path(out_dir) / "plots"


def evaluate_model(model: StarkLightning, cfg: DictConfig, out_dir: str | Path, device: torch.device,
                   progress: bool = True) -> dict[str, Any]:
    """Tracks `cfg.data`'s evaluation split with `model` (and the static-box tracker), writes results, plots
    and per-sequence scores under `out_dir`, returns the model's metrics plus the static tracker's AUC."""
    from .data.config import build_reader, check_data, to_data_conf
    from .metrics import evaluate_sequences, image_size, write_report

    out_dir, ev = Path(out_dir), cfg.evaluation
    check_data(cfg.data, train=False)  # a broken sequence fails here, named, not mid-evaluation
    reader = build_reader(cfg.data)
    norm = to_data_conf(cfg.data).processing
    names = reader.sequence_names()[: ev.max_sequences]
    sequences = [reader.sequence(n) for n in names]
    sizes = {s.name: size for s in sequences if (size := image_size(s)) is not None}
    trackers: list[Tracker] = [StarkTracker(model, device, ev.template_factor, ev.search_factor, ev.margin,
                                            mean=norm.mean, std=norm.std)]
    if ev.static_baseline:
        trackers.append(StaticBoxTracker())
    scores, speed = {}, {}
    for tracker in trackers:
        run = run_tracker(tracker, sequences, out_dir / "results" / tracker.name, progress, ev.get("batch_sequences", 1))
        scores[tracker.name] = evaluate_sequences(run["predictions"], sequences, sizes)
        speed[tracker.name] = run["speed"]
    data_name = f"{cfg.data.name} {cfg.data.split}"
    summaries, plots = write_report(scores, scores_dir(out_dir), data_name)
    result = {**summaries["model"], "fps": speed["model"]["fps"], "model_fps": speed["model"]["model_fps"],
              "eval_batch": ev.get("batch_sequences", 1),
              "dataset": data_name, "results_dir": str(out_dir / "results" / "model")}
    if "static" in summaries:
        result.update({f"static_{k}": summaries["static"][k] for k in ("auc", "precision", "ao")})
    return result


def evaluate_on(model: StarkLightning, cfg: Any, data: Any, out_dir: str | Path, device: torch.device,
                progress: bool = True) -> dict[str, Any]:
    """evaluate_model on another data node (a held-out split) than the one `cfg` (a run's config) was trained on;
    the generated-data cache stays the run's own."""
    scored = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    node = OmegaConf.to_container(data, resolve=True) if OmegaConf.is_config(data) else dict(data)
    node["cache_dir"] = scored.data.get("cache_dir", node.get("cache_dir"))
    scored.data = node
    return evaluate_model(model, scored, out_dir, device=device, progress=progress)


def baseline_model_config() -> DictConfig:
    """STARK-Lightning with its own head at 128/320 (the schema defaults): the model the official file holds."""
    from heads.spec import HeadSpec

    from .config import ModelConf

    return OmegaConf.create({"model": OmegaConf.structured(ModelConf), "head": OmegaConf.structured(HeadSpec)})


def load_model(checkpoint: str | Path) -> tuple[StarkLightning, DictConfig]:
    """Rebuilds a trained model and the config it was built from: from one of this project's checkpoints (its
    config travels inside) or from STARK-Lightning's official file, which carries no config of ours, so the
    baseline model config is used (and logged)."""
    from hydra.utils import instantiate

    from .model.checkpoint import load_official_checkpoint, own_checkpoint, read_checkpoint

    state = read_checkpoint(checkpoint)
    if isinstance(state, dict) and "net" in state:
        cfg = baseline_model_config()
        model = instantiate(cfg.model)
        load_official_checkpoint(model, checkpoint, state=state)
        log.info("%s is STARK-Lightning's official checkpoint: it carries no config of ours, so the baseline "
                 "model config is used (RepVGG head, template %d / search %d)", checkpoint,
                 cfg.model.template_size, cfg.model.search_size)
        return model, cfg
    state = own_checkpoint(state, checkpoint)
    cfg = OmegaConf.create(state["config"])
    model = instantiate(cfg.model)
    model.load_state_dict(state["model"])
    return model, cfg


def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from .profile import resolve_device

    from .config import validate

    validate(cfg)
    if not cfg.checkpoint:
        raise ValueError("checkpoint=PATH is required: a checkpoint written by tracker.train "
                         "(runs/train/<run>/checkpoints/last.pt) or STARK-Lightning's official "
                         "STARK_Lightning_X_trt_ep0500.pth.tar")
    device = resolve_device(cfg.device)
    model, model_cfg = load_model(cfg.checkpoint)
    trained = OmegaConf.select(model_cfg, "data.processing")
    if trained is not None:  # the model sees crops normalised as in its training, whatever data it is scored on
        for key in ("mean", "std"):
            cfg.data.processing[key] = trained[key]
    out_dir = Path(cfg.output_dir or HydraConfig.get().runtime.output_dir)
    result = evaluate_model(model.to(device), cfg, out_dir, device, progress=cfg.progress)
    result["checkpoint"] = str(cfg.checkpoint)
    atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=2))
    print(json.dumps(result))


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "evaluate")()


if __name__ == "__main__":
    main()
