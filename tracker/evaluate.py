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

    @torch.no_grad()
    def initialize(self, image, box: np.ndarray) -> None:
        pixels, mask, _ = self._input(image, box, self.template_factor, self.model.template_size)
        self.template = self.model.encode_template(pixels, mask)
        self.box = np.asarray(box, dtype=np.float64)

    @torch.no_grad()
    def update(self, image) -> np.ndarray:
        pixels, mask, crop = self._input(image, self.box, self.search_factor, self.model.search_size)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        started = time.perf_counter()
        cx, cy, w, h = self.model.track(pixels, mask, self.template)["boxes"][0].float().cpu().numpy()
        sync()
        self.model_seconds += time.perf_counter() - started
        box = crop.box_to_image([cx - 0.5 * w, cy - 0.5 * h, w, h])
        self.box = clip_box(box, image.height, image.width, self.margin)
        return self.box


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


def run_tracker(tracker: Tracker, sequences: list, results_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Tracks every sequence, writes `<sequence>.txt`, returns predictions and speed."""
    from .metrics import write_results

    predictions, frames, started = {}, 0, time.perf_counter()
    tracker.model_seconds = 0.0
    for sequence in tqdm(sequences, desc=f"tracking ({tracker.name})", unit="seq", disable=not progress,
                         leave=False):
        predictions[sequence.name] = track_sequence(tracker, sequence)
        write_results(results_dir, sequence.name, predictions[sequence.name])
        frames += len(sequence.frames) - 1
    seconds = time.perf_counter() - started
    speed = {"fps": frames / seconds if seconds else math.inf,
             "model_fps": frames / tracker.model_seconds if tracker.model_seconds else None}
    return {"predictions": predictions, "speed": speed}


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
        run = run_tracker(tracker, sequences, out_dir / "results" / tracker.name, progress)
        scores[tracker.name] = evaluate_sequences(run["predictions"], sequences, sizes)
        speed[tracker.name] = run["speed"]
    data_name = f"{cfg.data.name} {cfg.data.split}"
    summaries, plots = write_report(scores, out_dir / "plots", data_name)
    result = {**summaries["model"], "fps": speed["model"]["fps"], "model_fps": speed["model"]["model_fps"],
              "dataset": data_name, "results_dir": str(out_dir / "results" / "model")}
    if "static" in summaries:
        result.update({f"static_{k}": summaries["static"][k] for k in ("auc", "precision", "ao")})
    return result


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

    from .checkpoint import load_official_checkpoint, own_checkpoint, read_checkpoint

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
    import hydra

    hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")(_main)()


if __name__ == "__main__":
    main()
