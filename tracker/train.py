"""One trial: train a tracker, then track and score it. `python -m tracker.train head=dsconv trainer=cpu`.

A run directory holds the resolved config, `checkpoints/last.pt` (written atomically every epoch; a rerun
in the same directory resumes from it), `metrics.csv` (one row per epoch), `metrics.json`, per-sequence
results and plots. The last stdout line is one JSON object with the metrics, the cost profile and the
run directory. `run_trial` is the same thing as a function, for the sweeper.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import box_convert, box_iou
from tqdm.auto import tqdm

from .profile import profile_model, resolve_device

from .model.checkpoint import load_checkpoint, load_trunk, save_checkpoint
from .config import runs_root, validate
from .io import atomic_path, atomic_write_text
from .losses import box_loss
from .model import TRUNK_PREFIXES, StarkLightning
from .version import MODEL_VERSION

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms(enabled: bool):
    """`trainer.deterministic`: PyTorch's deterministic kernels only (an op that has none raises), cuDNN without
    autotuning, cuBLAS with a fixed workspace; the previous settings come back afterwards. Pairs and worker
    seeds are deterministic already (every sample draws from a generator seeded by its index)."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    previous = torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: before the first matmul
    torch.use_deterministic_algorithms(True)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        cudnn.benchmark, cudnn.deterministic = previous[1:]


def config_key(*nodes: Any) -> str:
    """A short stable hash of resolved config nodes: the cache key of trunks and cached features."""
    blob = json.dumps([OmegaConf.to_container(n, resolve=True, enum_to_str=True) if OmegaConf.is_config(n) else n
                       for n in nodes], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


class Precision:
    """Autocast and grad scaling for the device: bf16 where CUDA supports it, else fp16 with a scaler; fp32 on CPU."""

    def __init__(self, mode: str, device: torch.device):
        cuda = device.type == "cuda"
        if mode == "auto":
            mode = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
        if mode != "fp32" and not cuda:
            raise ValueError(f"trainer.amp={mode!r} needs CUDA; this run is on {device}: use trainer.amp=fp32")
        self.mode, self.device = mode, device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()


def build_optimizer(model: nn.Module, cfg: DictConfig) -> torch.optim.Optimizer:
    """AdamW; backbone parameters at `backbone_lr_scale` x the base rate (SPEC.md)."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if name.startswith("backbone.") else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def trunk_modules(model: StarkLightning) -> list[nn.Module]:
    return [model.backbone, model.bottleneck, model.template_pos, model.search_pos, model.encoder]


def trial_data(cfg: DictConfig):
    """The data config a trial's loaders read: the trainer's crop sizes and search jitter in place of the data
    config's (which they override)."""
    from .data import with_crops

    t = cfg.trainer
    return with_crops(cfg.data, t.template_size, t.search_size, t.search_center_jitter, t.search_scale_jitter)


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """A run directory's checkpoint: the last epoch's model, optimiser and history (what a rerun resumes)."""
    return Path(run_dir) / "checkpoints" / "last.pt"


class Trial:
    """Builds the model, the data and the optimiser for one config; trains, resumes, evaluates."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike, on_epoch_end: Optional[EpochCallback] = None,
                 progress: bool = True):
        from .data import check_data

        validate(cfg)  # a bad config and broken data fail here, before anything is trained or written
        check_data(cfg.data)
        self.cfg, self.t = cfg, cfg.trainer
        self.run_dir = Path(run_dir)
        self.on_epoch_end, self.progress = on_epoch_end, progress
        self.device = resolve_device(self.t.device)
        self.precision = Precision(self.t.amp, self.device)
        self.checkpoint_path = run_checkpoint(self.run_dir)

    # ---- data -------------------------------------------------------------------------------------
    def pair_loader(self, split: str, pairs: int, seed: int) -> DataLoader:
        from .data import build_pair_loader

        return build_pair_loader(trial_data(self.cfg), split=split, pairs_per_epoch=pairs,
                                 batch_size=self.t.batch_size, num_workers=self.t.num_workers, seed=seed,
                                 device=self.device)

    # ---- model ------------------------------------------------------------------------------------
    def build_model(self) -> StarkLightning:
        seed_everything(self.t.seed)
        model = instantiate(self.cfg.model)
        if self.t.fidelity != "full":
            load_trunk(model, self.trunk_path())
        if self.t.fidelity == "head":
            for m in trunk_modules(model):
                freeze(m)
        elif self.t.freeze_stage0:
            freeze(model.backbone.stage0)
        return model.to(self.device)

    def trunk_path(self) -> Path:
        if self.t.trunk:
            path = Path(self.t.trunk)
            if not path.is_file():
                raise FileNotFoundError(f"trainer.trunk={self.t.trunk!r} does not exist")
            return path
        return ensure_baseline_trunk(self.cfg, progress=self.progress)

    # ---- training ---------------------------------------------------------------------------------
    def train(self) -> StarkLightning:
        with deterministic_algorithms(self.t.deterministic):
            return self._train()

    def _train(self) -> StarkLightning:
        model = self.build_model()
        optimizer = build_optimizer(model, self.t)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.t.lr_step_epochs, self.t.lr_gamma)
        history: list[dict[str, float]] = []
        start_epoch = 0
        if self.checkpoint_path.is_file():
            state = load_checkpoint(self.checkpoint_path)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self.precision.scaler.load_state_dict(state["scaler"])
            history, start_epoch = state["history"], state["epoch"]
            log.info("resuming %s from epoch %d", self.run_dir, start_epoch)
        if start_epoch >= self.t.epochs:
            return model
        batches = self.head_feature_batches(model) if self.t.fidelity == "head" else None
        loader = None if batches else self.pair_loader("train", self.t.pairs_per_epoch, self.t.seed)
        for epoch in range(start_epoch, self.t.epochs):
            seed_everything(self.t.seed + 1000 * (epoch + 1))  # dropout and shuffles repeat after a resume
            started = time.perf_counter()
            if batches is not None:
                stats = self.train_head_epoch(model, optimizer, batches, epoch)
            else:
                loader.sampler.set_epoch(epoch)
                stats = self.train_epoch(model, optimizer, loader, epoch)
            scheduler.step()
            stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"],
                         seconds=time.perf_counter() - started)
            if batches is not None:
                stats["val_iou"] = self.val_iou(model, batches["val"])
            if self.on_epoch_end is not None and self.t.report_every and (epoch + 1) % self.t.report_every == 0:
                self.on_epoch_end(epoch + 1, stats)
            history.append(stats)
            save_checkpoint(self.checkpoint_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(), scaler=self.precision.scaler.state_dict(),
                            history=history, epoch=epoch + 1, config=self.model_config())
            self.write_history(history)
        return model

    def step(self, model, optimizer, loss: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step} "
                                     f"(lr {optimizer.param_groups[0]['lr']:.3g}); the run stops here")
        optimizer.zero_grad(set_to_none=True)
        self.precision.scaler.scale(loss).backward()
        if self.t.grad_clip > 0:
            self.precision.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], self.t.grad_clip)
        self.precision.scaler.step(optimizer)
        self.precision.scaler.update()

    def _bar(self, total: int, epoch: int):
        return tqdm(total=total, desc=f"epoch {epoch + 1}/{self.t.epochs}", unit="batch", leave=False,
                    disable=not self.progress, dynamic_ncols=True)

    def train_epoch(self, model: StarkLightning, optimizer, loader: DataLoader, epoch: int) -> dict[str, float]:
        model.train()
        sums, n = {"loss": 0.0, "giou": 0.0, "l1": 0.0, "iou": 0.0}, 0
        with self._bar(len(loader), epoch) as bar:
            for step, batch in enumerate(loader):
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                with self.precision.autocast():
                    out = model(batch["template"], batch["template_mask"], batch["search"], batch["search_mask"])
                target = box_convert(batch["search_box"], "xywh", "xyxy")
                loss, parts = box_loss(out["corners"], target, self.t.giou_weight, self.t.l1_weight)
                self.step(model, optimizer, loss, epoch, epoch * len(loader) + step)
                n += self._accumulate(sums, loss, parts, out["corners"], target)
                bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", refresh=False)
                bar.update()
        return {k: v / max(n, 1) for k, v in sums.items()}

    @staticmethod
    def _accumulate(sums, loss, parts, corners, target) -> int:
        b = corners.shape[0]
        sums["loss"] += loss.item() * b
        sums["giou"] += parts["giou"].item() * b
        sums["l1"] += parts["l1"].item() * b
        sums["iou"] += box_iou(corners.detach().float(), target.clamp(0, 1)).diagonal().sum().item()
        return b

    # ---- head fidelity: train on cached trunk features ---------------------------------------------
    def head_feature_batches(self, model: StarkLightning) -> dict[str, TensorDataset]:
        pairs = self.t.head_feature_pairs or self.t.pairs_per_epoch
        trunk = trunk_digest(model)
        return {split: cached_trunk_features(self, model, trunk, split, pairs if split == "train" else
                                             max(self.t.batch_size, pairs // 4)) for split in ("train", "val")}

    def train_head_epoch(self, model: StarkLightning, optimizer, data: dict[str, TensorDataset],
                         epoch: int) -> dict[str, float]:
        model.head.train()
        generator = torch.Generator().manual_seed(self.t.seed + epoch)
        loader = DataLoader(data["train"], batch_size=self.t.batch_size, shuffle=True, generator=generator,
                            drop_last=len(data["train"]) > self.t.batch_size)
        sums, n = {"loss": 0.0, "giou": 0.0, "l1": 0.0, "iou": 0.0}, 0
        with self._bar(len(loader), epoch) as bar:
            for step, (features, target) in enumerate(loader):
                features, target = features.to(self.device).float(), target.to(self.device)
                with self.precision.autocast():
                    corners = model.head(features)
                loss, parts = box_loss(corners, target, self.t.giou_weight, self.t.l1_weight)
                self.step(model, optimizer, loss, epoch, epoch * len(loader) + step)
                n += self._accumulate(sums, loss, parts, corners, target)
                bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", refresh=False)
                bar.update()
        return {k: v / max(n, 1) for k, v in sums.items()}

    @torch.no_grad()
    def val_iou(self, model: StarkLightning, data: TensorDataset) -> float:
        """Mean IoU on held-out val pairs: the cheap intermediate value a pruner sees after each epoch."""
        features, target = data.tensors
        model.head.eval()
        corners = model.head(features.to(self.device).float())
        model.head.train()
        return box_iou(corners.float(), target.to(self.device).clamp(0, 1)).diagonal().mean().item()

    # ---- outputs ----------------------------------------------------------------------------------
    def model_config(self) -> dict[str, Any]:
        """The resolved config, stored in every checkpoint so that the model can be rebuilt from it alone."""
        return OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True)

    def write_history(self, history: list[dict[str, float]]) -> None:
        with atomic_path(self.run_dir / "metrics.csv") as tmp:
            pd.DataFrame(history).to_csv(tmp, index=False)


def trunk_digest(model: StarkLightning) -> str:
    """A hash of the trunk's weights: cached features are valid for exactly these."""
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        if name.startswith(TRUNK_PREFIXES):
            digest.update(name.encode())
            digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def cached_trunk_features(trial: Trial, model: StarkLightning, trunk: str, split: str, pairs: int) -> TensorDataset:
    """Trunk outputs (the head's input) and target corners for a fixed set of pairs, computed once and kept
    under runs/features/, keyed by the trunk weights' digest, what decides the pairs (readers, sampling, crops),
    the pair count, the seed and the model version."""
    from .data import pairs_key

    t = trial.t
    key = config_key(pairs_key(trial_data(trial.cfg), split), trunk, split, pairs, t.seed, MODEL_VERSION)
    path = runs_root() / "features" / f"{split}-{key}.pt"
    if path.is_file():
        features, target = torch.load(path, weights_only=True)
    else:
        loader = trial.pair_loader(split, pairs, t.seed + (0 if split == "train" else 7919))
        model.eval()
        chunks, targets = [], []
        for batch in tqdm(loader, desc=f"trunk features ({split})", unit="batch", leave=False,
                          disable=not trial.progress):
            batch = {k: v.to(trial.device) for k, v in batch.items()}
            template = model.encode_template(batch["template"], batch["template_mask"])
            chunks.append(model.search_features(batch["search"], batch["search_mask"], template).half().cpu())
            targets.append(box_convert(batch["search_box"], "xywh", "xyxy").cpu())
        features, target = torch.cat(chunks), torch.cat(targets)
        with atomic_path(path) as tmp:
            torch.save((features, target), tmp)
    return TensorDataset(features, target)


SHIPPED_TRUNKS = Path(__file__).resolve().parents[1] / "assets" / "trunks"  # `make trunk` writes <key>.pt here


def baseline_trunk_config(cfg: DictConfig) -> tuple[DictConfig, str]:
    """The full baseline (RepVGG head) run a preset's head trials start from, and its cache key (model sizes
    and BN, the training pairs, the recipe `trainer.baseline_trunk`, the model version)."""
    from .data import pairs_key

    trunk_cfg = copy.deepcopy(cfg)  # struct mode stays on: a misspelt key here fails
    trunk_cfg.head = OmegaConf.structured(_baseline_head())
    t, recipe = trunk_cfg.trainer, trunk_cfg.trainer.baseline_trunk
    t.update({**OmegaConf.to_container(recipe), "fidelity": "full", "trunk": None})
    key = config_key(trunk_cfg.model, trunk_cfg.head, pairs_key(trial_data(trunk_cfg), "train"),  # model: sizes, BN
                     recipe, MODEL_VERSION)
    return trunk_cfg, key


def ensure_baseline_trunk(cfg: DictConfig, progress: bool = True) -> Path:
    """The trunk head trials start from when none is given, cached under runs/trunks/<key>/: the one shipped in
    assets/trunks/<key>.pt when there is one (`make trunk`), else trained once on this data at this preset's sizes
    (a file lock serialises concurrent sweeps; an interrupted trunk run resumes)."""
    from filelock import FileLock

    trunk_cfg, key = baseline_trunk_config(cfg)
    directory = runs_root() / "trunks" / key
    final = directory / "trunk.pt"
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory / ".lock")):
        if final.is_file():
            return final
        shipped = SHIPPED_TRUNKS / f"{key}.pt"
        if shipped.is_file():
            log.info("baseline trunk %s: using the shipped one, %s (provenance: %s)", key, shipped,
                     shipped.with_suffix(".json").name)
            state = load_checkpoint(shipped)
            save_checkpoint(final, model={k: v.float() if v.is_floating_point() else v
                                          for k, v in state["model"].items()}, config=state["config"])
            return final
        log.info("baseline trunk %s: none cached in %s and none shipped in %s, so it is trained now, once (%d "
                 "epochs; `make trunk` ships one)", key, directory.parent, SHIPPED_TRUNKS, trunk_cfg.trainer.epochs)
        OmegaConf.save(trunk_cfg, directory / "config.yaml")
        model = Trial(trunk_cfg, directory, progress=progress).train()
        save_checkpoint(final, model=model.state_dict(), config=OmegaConf.to_container(trunk_cfg, resolve=True,
                                                                                        enum_to_str=True))
    return final


def _baseline_head():
    from heads.spec import HeadSpec

    return HeadSpec()


def run_trial(cfg: DictConfig, run_dir: str | os.PathLike, on_epoch_end: Optional[EpochCallback] = None,
              progress: bool = True) -> dict[str, Any]:
    """Train, profile and evaluate one config; writes every artefact into `run_dir`; returns the metrics."""
    from .evaluate import evaluate_model

    run_dir = Path(run_dir)
    trial = Trial(cfg, run_dir, on_epoch_end=on_epoch_end, progress=progress)  # validates config and data first
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    started = time.perf_counter()
    model = trial.train()
    train_seconds = time.perf_counter() - started
    profile = profile_model(model, trial.device, latency=True, warmup=3, repeats=20)
    metrics = evaluate_model(model, cfg, run_dir, device=trial.device, progress=progress)
    result = {**metrics, **{k: v for k, v in profile.items() if k != "device"}, "train_seconds": train_seconds,
              "fidelity": trial.t.fidelity, "device": str(trial.device), "run_dir": str(run_dir.resolve())}
    history = pd.read_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else None
    if history is not None and len(history):
        result["final_train_loss"] = float(history["loss"].iloc[-1])
        plot_history(history, run_dir / "plots" / "training.png")
    atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2, default=str))
    return result


def plot_history(history: pd.DataFrame, path: Path) -> None:
    """Loss and IoU by epoch (whole epochs on the axis); the held-out val IoU beside the training IoU when the
    run measured it (head fidelity). Built without pyplot's global state, so no backend is switched."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.2))
    ax_loss, ax_iou = fig.subplots(1, 2)
    ax_loss.plot(history["epoch"], history["loss"], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss (2 GIoU + 5 L1)")
    ax_iou.plot(history["epoch"], history["iou"], marker="o", label="training pairs")
    if "val_iou" in history:
        ax_iou.plot(history["epoch"], history["val_iou"], marker="s", label="held-out val pairs")
        ax_iou.legend(fontsize=8)
    ax_iou.set(xlabel="epoch", ylabel="IoU", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _main(cfg: DictConfig) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig

    result = run_trial(cfg, HydraConfig.get().runtime.output_dir)
    print(json.dumps(result, default=str))
    return result.get("auc")


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "train")()


if __name__ == "__main__":
    main()
