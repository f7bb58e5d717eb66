"""The training engine: one epoch loop for every fidelity, and what makes a run repeatable (seeds, deterministic
kernels, mixed precision). The loop knows nothing of models or data: a `forward(batch) -> (corners, target)` says
what a batch means (pairs through the whole tracker, or cached trunk features through the head alone)."""
from __future__ import annotations

import os
import random
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_iou
from tqdm.auto import tqdm

from .losses import box_loss

Forward = Callable[[object], tuple[torch.Tensor, torch.Tensor]]  # batch -> (predicted, target) xyxy corners


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


class Engine:
    """Steps an optimiser on STARK's box loss (GIoU + L1 on the corners) with grad clipping and mixed precision;
    `run_epoch` is the only training loop in the project."""

    def __init__(self, optimizer: torch.optim.Optimizer, precision: Precision, giou_weight: float, l1_weight: float,
                 grad_clip: float, epochs: int, progress: bool = True):
        self.optimizer, self.precision = optimizer, precision
        self.giou_weight, self.l1_weight, self.grad_clip = giou_weight, l1_weight, grad_clip
        self.epochs, self.progress = epochs, progress

    def step(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step} "
                                     f"(lr {self.optimizer.param_groups[0]['lr']:.3g}); the run stops here")
        scaler = self.precision.scaler
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.grad_clip > 0:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], self.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()

    def run_epoch(self, batches: Iterable, forward: Forward, epoch: int, steps: Optional[int] = None
                  ) -> dict[str, float]:
        """One pass over `batches`; the mean loss, GIoU and L1 terms and training IoU, weighted by batch size.
        `forward` runs under autocast; the caller puts its modules in train mode."""
        steps = len(batches) if steps is None else steps  # type: ignore[arg-type]
        sums, n = {"loss": 0.0, "giou": 0.0, "l1": 0.0, "iou": 0.0}, 0
        with tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                  disable=not self.progress, dynamic_ncols=True) as bar:
            for step, batch in enumerate(batches):
                with self.precision.autocast():
                    corners, target = forward(batch)
                loss, parts = box_loss(corners, target, self.giou_weight, self.l1_weight)
                self.step(loss, epoch, epoch * steps + step)
                b = corners.shape[0]
                sums["loss"] += loss.item() * b
                sums["giou"] += parts["giou"].item() * b
                sums["l1"] += parts["l1"].item() * b
                sums["iou"] += box_iou(corners.detach().float(), target.clamp(0, 1)).diagonal().sum().item()
                n += b
                bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", refresh=False)
                bar.update()
        return {k: v / max(n, 1) for k, v in sums.items()}
