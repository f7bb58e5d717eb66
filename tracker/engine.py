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
    `run_epoch` is the only training loop in the project.

    Data-parallel (`all_sum`: a tensor's element-wise sum over the ranks, `tracker.distributed.Session.all_sum`):
    each rank steps on its share of the global batch (DDP averages the gradients in `backward`); the statistics
    are summed over the ranks every step, so every rank sees the global batch's loss (a non-finite one stops all
    ranks at the same step, before a collective that one of them would never reach) and returns the global epoch
    figures."""

    def __init__(self, optimizer: torch.optim.Optimizer, precision: Precision, giou_weight: float, l1_weight: float,
                 grad_clip: float, epochs: int, progress: bool = True,
                 all_sum: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        self.optimizer, self.precision = optimizer, precision
        self.giou_weight, self.l1_weight, self.grad_clip = giou_weight, l1_weight, grad_clip
        self.epochs, self.progress, self.all_sum = epochs, progress, all_sum

    def step(self, loss: torch.Tensor, epoch: int, step: int, global_loss: Optional[float] = None) -> None:
        """`global_loss`: the global batch's mean loss (data-parallel), checked in place of this rank's."""
        shown = loss.item() if global_loss is None else global_loss
        if not np.isfinite(shown):
            raise NonFiniteLossError(f"loss became {shown} at epoch {epoch + 1}, step {step} "
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
                b = corners.shape[0]
                with torch.no_grad():  # this batch's sums (float64): loss, giou, l1, iou, pairs
                    iou = box_iou(corners.detach().float(), target.clamp(0, 1)).diagonal().sum()
                    sizes = torch.stack([loss.detach(), parts["giou"].detach(), parts["l1"].detach()]).double() * b
                    figures = torch.cat([sizes, torch.stack([iou.double(), torch.full_like(iou, b).double()])])
                parallel = self.all_sum is not None
                values = (self.all_sum(figures) if parallel else figures).tolist()  # the global batch's
                self.step(loss, epoch, epoch * steps + step, values[0] / values[4] if parallel else None)
                for key, value in zip(sums, values):
                    sums[key] += value
                n += int(values[4])
                bar.set_postfix(loss=f"{sums['loss'] / n:.3f}", refresh=False)
                bar.update()
        return {k: v / max(n, 1) for k, v in sums.items()}
