"""One trial's training: `Trial` builds the model, the data and the optimiser for one config, trains it (resuming
from the run directory's checkpoint) and keeps its history. `python -m tracker.train head=dsconv trainer=cpu` runs a
whole trial (`tracker.task.run_trial`: train, profile, track and score).

A run directory holds the resolved config, `checkpoints/last.pt` (written atomically every epoch; a rerun
in the same directory resumes from it), `metrics.csv` (one row per epoch), `metrics.json`, per-sequence
results and plots. The last stdout line is one JSON object with the metrics, the cost profile and the
run directory.

Under `torchrun --nproc_per_node=N -m tracker.train ...` (full and finetune fidelity) the N processes train one
trial data-parallel (`tracker.distributed`): `trainer.batch_size` is the global batch, each rank trains on its
B/N share, and rank 0 alone writes the run directory, evaluates and prints the JSON line.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import box_convert, box_iou

from . import distributed
from .cache import ensure_baseline_trunk, trunk_digest, trunk_features
from .config import ConfigError, validate
from .engine import Engine, Precision, deterministic_algorithms, seed_everything
from .io import atomic_path
from .model import StarkLightning
from .model.checkpoint import load_checkpoint, load_trunk, save_checkpoint
from .latency import resolve_device
from .task import EpochCallback, run_checkpoint, run_trial

log = logging.getLogger(__name__)


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """`trainer.optimizer` (AdamW) over the trainable parameters; backbone parameters at `backbone_lr_scale` x
    the base rate (SPEC.md)."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (backbone if name.startswith("backbone.") else rest).append(p)
    groups = [{"params": rest, "lr": cfg.lr}]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.lr * cfg.backbone_lr_scale})
    return instantiate(cfg.optimizer)(groups, lr=cfg.lr)


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def trunk_modules(model: StarkLightning) -> list[nn.Module]:
    return [model.backbone, model.bottleneck, model.template_pos, model.search_pos, model.encoder]


def trial_data(cfg: DictConfig):
    """The data config a trial's loaders read: the trainer's search jitter in place of the data config's when it
    sets one. The crop sizes are the model's already (conf/data/pairs/stark.yaml reads them; validate checks)."""
    from .data import with_crops

    t = cfg.trainer
    return with_crops(cfg.data, center_jitter=t.search_center_jitter, scale_jitter=t.search_scale_jitter)


class Trial:
    """Builds the model, the data and the optimiser for one config; trains, resumes, evaluates."""

    def __init__(self, cfg: DictConfig, run_dir: str | os.PathLike, on_epoch_end: Optional[EpochCallback] = None,
                 progress: bool = True):
        from .data import check_data

        typed = validate(cfg)  # a bad config and broken data fail here, before anything is trained or written
        check_data(cfg.data)
        self.cfg, self.t = cfg, typed["trainer"]  # the checked TrainerConf, interpolations resolved
        self.run_dir = Path(run_dir)
        self.on_epoch_end, self.progress = on_epoch_end, progress
        self.dist = distributed.active()  # data-parallel under torchrun (None: one process)
        if self.dist is not None:
            self._check_parallel()
        if self.t.fidelity == "full" and self.t.frozen_bn:
            log.warning("trainer.fidelity=full with trainer.frozen_bn=true trains the whole tracker from scratch "
                        "with its backbone BN frozen at random statistics (STARK freezes ImageNet-pretrained BN): "
                        "for head ablations give a trunk (trainer=gpu_head trainer.trunk=PATH), or set "
                        "trainer.frozen_bn=false")
        self.device = self.dist.device if self.dist is not None else resolve_device(self.t.device)
        self.precision = Precision(self.t.amp, self.device)
        self.checkpoint_path = run_checkpoint(self.run_dir)

    def _check_parallel(self) -> None:
        """What data-parallel training supports, checked before anything is built."""
        world = self.dist.world_size
        if self.t.fidelity == "head":
            raise ConfigError(f"trainer.fidelity=head under torchrun ({world} processes) is not supported: a head "
                              f"trial trains on cached trunk features in minutes on one device; run head trials one "
                              f"process each (a sweep's launcher runs them in parallel)")
        if self.t.batch_size % world:
            raise ConfigError(f"trainer.batch_size={self.t.batch_size} is not allowed under torchrun with {world} "
                              f"processes: the global batch, a multiple of the process count (each trains on "
                              f"batch_size / {world})")

    @property
    def main(self) -> bool:
        """This process writes the run directory (rank 0, or the only process)."""
        return self.dist is None or self.dist.main

    # ---- data -------------------------------------------------------------------------------------
    def pair_loader(self, split: str, pairs: int, seed: int, shard: bool = False) -> DataLoader:
        """`shard` (data-parallel training): this rank's share of every global batch of trainer.batch_size."""
        from .data import build_pair_loader

        parallel = {"rank": self.dist.rank, "world_size": self.dist.world_size} if shard and self.dist else {}
        return build_pair_loader(trial_data(self.cfg), split=split, pairs_per_epoch=pairs,
                                 batch_size=self.t.batch_size, num_workers=self.t.num_workers, seed=seed,
                                 device=self.device, **parallel)

    # ---- model ------------------------------------------------------------------------------------
    def build_model(self) -> StarkLightning:
        seed_everything(self.t.seed)
        model = instantiate(self.cfg.model)
        if self.t.fidelity != "full":
            with distributed.suspended():  # a baseline trunk still to train trains in one process (the first here)
                trunk = self.trunk_path()
            load_trunk(model, trunk)
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
        if self.dist is None:
            return self._train_model(model, model)
        with distributed.sync_batchnorm(model, self.device):  # BatchNorm over the global batch; plain BN after
            return self._train_model(model, self.dist.wrap(model))

    def _train_model(self, model: StarkLightning, net: nn.Module) -> StarkLightning:
        """Trains `model` through `net` (the model itself, or its DistributedDataParallel wrapper); rank 0 alone
        writes the checkpoint, the history, the log and the experiment logger's scalars."""
        dist, main = self.dist, self.main
        optimizer = build_optimizer(model, self.t)
        scheduler = instantiate(self.t.scheduler)(optimizer)
        engine = Engine(optimizer, self.precision, self.t.giou_weight, self.t.l1_weight, self.t.grad_clip,
                        self.t.epochs, self.progress and main, all_sum=dist.all_sum if dist else None)
        history: list[dict[str, float]] = []
        start_epoch = 0
        if self.checkpoint_path.is_file():  # every rank reads rank 0's checkpoint: the same state everywhere
            state = load_checkpoint(self.checkpoint_path)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            self.precision.scaler.load_state_dict(state["scaler"])
            history, start_epoch = state["history"], state["epoch"]
            if main:
                log.info("resuming %s from epoch %d", self.run_dir, start_epoch)
        if start_epoch >= self.t.epochs:
            return model
        writer = self.experiment_logger() if main else None
        head_only = self.t.fidelity == "head"
        config = self.model_config()  # stored in every checkpoint
        features = self.head_features(model) if head_only else None
        loader = None if head_only else self.pair_loader("train", self.t.pairs_per_epoch, self.t.seed, shard=True)
        rank = dist.rank if dist else 0
        with contextlib.closing(writer) if writer is not None else contextlib.nullcontext(), \
                self.head_layout(model, head_only) as layout:
            for epoch in range(start_epoch, self.t.epochs):
                # dropout and shuffles repeat after a resume; each rank draws its own dropout masks (rank 0 the
                # single process's)
                seed_everything(self.t.seed + 1000 * (epoch + 1) + rank)
                started = time.perf_counter()
                if head_only:
                    model.head.train()
                    batches = self.feature_batches(features["train"], epoch)
                    stats = engine.run_epoch(batches, self.head_forward(model, layout), epoch)
                else:
                    net.train()
                    loader.sampler.set_epoch(epoch)
                    stats = engine.run_epoch(loader, self.pair_forward(net), epoch)  # global figures
                scheduler.step()
                stats.update(epoch=epoch + 1, lr=optimizer.param_groups[0]["lr"],
                             seconds=time.perf_counter() - started)
                if head_only:
                    stats["val_iou"] = self.val_iou(model, features["val"])
                history.append(stats)
                if not main:
                    continue
                if self.on_epoch_end is not None and self.t.report_every and (epoch + 1) % self.t.report_every == 0:
                    self.on_epoch_end(epoch + 1, stats)
                save_checkpoint(self.checkpoint_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                                scheduler=scheduler.state_dict(), scaler=self.precision.scaler.state_dict(),
                                history=history, epoch=epoch + 1, config=config)
                self.write_history(history)
                self.log_epoch(stats)
                if writer is not None:
                    for name, value in stats.items():
                        if name not in ("epoch", "seconds"):
                            writer.add_scalar(f"train/{name}", value, epoch + 1)
                    writer.flush()
        return model

    @contextlib.contextmanager
    def head_layout(self, model: StarkLightning, head_only: bool):
        """Head fidelity on the CPU trains the head channels-last: the backward of its depthwise convolutions runs
        1.5-2x faster in that layout (one thread, batch 16: the user's head 12.7 -> 10.4 ms a step, mbconv x3 w128
        k7 272 -> 136 ms; RepVGG heads unchanged). The same math rounded differently, so a trial trained this way is
        another draw of it, as with another thread count. Yields the layout its features take (None: the default);
        the head leaves in the default layout (evaluation, export and later training see the usual one)."""
        if not head_only or self.device.type != "cpu":
            yield None
            return
        model.head.to(memory_format=torch.channels_last)
        try:
            yield torch.channels_last
        finally:
            model.head.to(memory_format=torch.contiguous_format)

    def experiment_logger(self) -> Optional[Any]:
        """The `logger` group's writer (logger=tensorboard: a SummaryWriter under <run dir>/tensorboard), or None."""
        node = self.cfg.get("logger")
        if node is None or node.get("_target_") is None:
            return None
        return instantiate(node, log_dir=str(self.run_dir / "tensorboard"))

    def log_epoch(self, stats: dict[str, float]) -> None:
        """One line per epoch in the run's `epochs.log` (`tail -f` shows a trial learning); on the terminal too when
        the run shows progress (a single run; a sweep's jobs keep the terminal to the sweep's status lines)."""
        val = f", val IoU {stats['val_iou']:.3f}" if "val_iou" in stats else ""
        line = (f"epoch {int(stats['epoch'])}/{self.t.epochs}: loss {stats['loss']:.3f}, IoU {stats['iou']:.3f}{val}, "
                f"lr {stats['lr']:.2g}, {stats['seconds']:.1f} s")
        with open(self.run_dir / "epochs.log", "a") as f:
            f.write(line + "\n")
        if self.progress:
            log.info(line)

    # ---- what a batch means at each fidelity ------------------------------------------------------
    def pair_forward(self, model: nn.Module):
        """Full and finetune fidelity: template and search crops through the whole tracker (or its DDP wrapper)."""
        def forward(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            out = model(batch["template"], batch["template_mask"], batch["search"], batch["search_mask"])
            return out["corners"], box_convert(batch["search_box"], "xywh", "xyxy")

        return forward

    def head_forward(self, model: StarkLightning, layout: Optional[torch.memory_format] = None):
        """Head fidelity: cached trunk features (in `layout`, when given) through the head alone."""
        def forward(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            features, target = batch
            features = features.to(self.device).float()
            if layout is not None:
                features = features.contiguous(memory_format=layout)
            return model.head(features), target.to(self.device)

        return forward

    def head_features(self, model: StarkLightning) -> dict[str, TensorDataset]:
        pairs = self.t.head_feature_pairs or self.t.pairs_per_epoch
        trunk = trunk_digest(model)
        return {split: trunk_features(self, model, trunk, split, pairs if split == "train" else
                                      max(self.t.batch_size, pairs // 4)) for split in ("train", "val")}

    def feature_batches(self, data: TensorDataset, epoch: int) -> DataLoader:
        generator = torch.Generator().manual_seed(self.t.seed + epoch)
        return DataLoader(data, batch_size=self.t.batch_size, shuffle=True, generator=generator,
                          drop_last=len(data) > self.t.batch_size)

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


def _main(cfg: DictConfig) -> Optional[float]:
    from hydra.core.hydra_config import HydraConfig

    run_dir = HydraConfig.get().runtime.output_dir
    _check_processes(cfg)
    if distributed.launched():
        return _main_parallel(cfg, run_dir)
    result = run_trial(cfg, run_dir)
    print(json.dumps(result.figures(), default=str))
    return result.metrics.get("auc")


def _check_processes(cfg: DictConfig) -> None:
    """`trainer.processes` (where the trainer's schema has it: the data-parallel processes a trial asks for, which a
    launcher starts as `torchrun --nproc_per_node=<processes>`) against the processes this run has: a mismatch
    changes no result (the batch is global), so it is only said."""
    asked, world = OmegaConf.select(cfg, "trainer.processes", default=None), distributed.env_rank()[2]
    if asked is not None and int(asked) != world and distributed.env_rank()[0] == 0:
        log.warning("trainer.processes=%s asks for %s data-parallel processes; this run has %d (start it as "
                    "`torchrun --nproc_per_node=%s -m tracker.train ...`)", asked, asked, world, asked)


def _main_parallel(cfg: DictConfig, run_dir: str) -> Optional[float]:
    """One trial, data-parallel, in each process torchrun started: rank 0 checks the config and the data (building
    what is cached, the synthetic set) while the others wait, then all train in rank 0's run directory; rank 0
    evaluates, writes and prints while the others wait at the session's last barrier."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .task import check_resumable

    rank, _, world = distributed.env_rank()
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(f"torchrun ({world} processes) runs one trial: drop -m/--multirun (a sweep starts one "
                          f"torchrun per trial through its launcher)")
    own_dir = Path(run_dir)
    if rank > 0:
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, force=True,
                            format=f"[rank {rank}][%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    with distributed.session(cfg.trainer.device) as dist:
        if dist.main:
            Trial(cfg, run_dir, progress=False)  # validates the config and the data before the others start
            check_resumable(cfg, run_dir)
        run_dir = dist.broadcast(str(Path(run_dir).absolute()) if dist.main else None)
        if not dist.main:  # Hydra's own folder for this rank (another second's timestamp): empty, not kept
            if own_dir.absolute() != Path(run_dir) and own_dir.is_dir() and not any(own_dir.iterdir()):
                own_dir.rmdir()
            Trial(cfg, run_dir, progress=False).train()
            return None
        result = run_trial(cfg, run_dir)
        print(json.dumps(result.figures(), default=str))
        return result.metrics.get("auc")


def _quiet_rank() -> None:
    """A rank other than 0 under torchrun writes nothing of Hydra's (no .hydra/ folder, no job log file) and logs
    to stderr, its lines prefixed with the rank; rank 0 is the run (its directory, log and stdout)."""
    rank = distributed.env_rank()[0]
    if rank == 0:
        return
    given = [a.lstrip("~+") for a in sys.argv[1:]]
    if not any(a.startswith("hydra.output_subdir=") for a in given):
        sys.argv += ["hydra.output_subdir=null"]
    if not any(a.startswith("hydra/job_logging=") for a in given):
        sys.argv += ["hydra/job_logging=none"]  # `_main_parallel` logs to stderr instead


def main() -> None:
    from .app import hydra_app

    if distributed.launched():
        _quiet_rank()
    hydra_app(_main, "train")()


if __name__ == "__main__":
    main()
