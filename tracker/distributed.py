"""Data-parallel training under `torchrun`: one process per device, DistributedDataParallel, the trainer's batch
split across the processes.

`torchrun --nproc_per_node=N -m tracker.train trainer=gpu ...` starts N copies of the app; each finds its rank in
the variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE) and joins one process group: NCCL when the trainer's
device is CUDA (rank r on cuda:LOCAL_RANK), gloo on CPU. `trainer.batch_size` stays the global batch: each rank
draws its own B/N pairs of every global batch (`tracker.data.sampler.EpochSampler`), DDP averages the gradients,
BatchNorm normalises over the global batch (SyncBatchNorm; `sync_batchnorm`), so N processes train what one
process at batch B trains, up to float rounding (and dropout masks, which each rank draws from its own stream).
Rank 0 alone writes (checkpoints, metrics.csv, epochs.log, TensorBoard), evaluates and scores; the other ranks
train, then wait for it at a barrier.

`torchrun --nproc_per_node=1`, or no torchrun at all, is the plain single-process path: no process group.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)

# how long ranks wait for rank 0 alone (preparing data, evaluating): a gloo group of its own with this timeout, so
# that the NCCL group's short watchdog never fires on a rank that is only waiting
WAIT_TIMEOUT = timedelta(hours=12)


def env_rank() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's variables; (0, 0, 1) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


def launched() -> bool:
    """This process is one of several started by torchrun (WORLD_SIZE > 1)."""
    return env_rank()[2] > 1


@dataclass
class Session:
    """This process's place in the process group, and the collectives training needs."""

    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: torch.device
    wait_group: Any = None  # gloo, long timeout: barriers and broadcasts around rank 0's work alone

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        """Every rank waits here for every other (for as long as rank 0 evaluates: WAIT_TIMEOUT)."""
        dist.barrier(group=self.wait_group)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank; a barrier too."""
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.wait_group)
        return box[0]

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `values` over the ranks (a new tensor, on this rank's device)."""
        total = values.detach().to(self.device, torch.float64)
        dist.all_reduce(total)
        return total

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` (on this rank's device) inside DistributedDataParallel, which broadcasts rank 0's parameters and
        buffers now and averages the gradients over the ranks in every backward."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


_ACTIVE: Optional[Session] = None


def active() -> Optional[Session]:
    """The session this process trains in (inside `session()`), or None: a single process."""
    return _ACTIVE


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Inside, training is single-process again (a cache one rank builds alone: the baseline trunk)."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, None
    try:
        yield
    finally:
        _ACTIVE = previous


def session_device(trainer_device: str, local_rank: int) -> torch.device:
    """The device of rank `local_rank` on its node for `trainer.device`: cuda:LOCAL_RANK when it is CUDA (auto
    with a GPU, cuda, cuda:N: under torchrun the local rank chooses the GPU; CUDA_VISIBLE_DEVICES narrows them),
    else the CPU."""
    from .config import ConfigError
    from .latency import resolve_device

    device = resolve_device(trainer_device)
    if device.type != "cuda":
        return device
    if device.index is not None and device.index != local_rank:
        log.warning("trainer.device=%s: under torchrun each rank trains on cuda:LOCAL_RANK (this one: cuda:%d); "
                    "choose the GPUs with CUDA_VISIBLE_DEVICES", trainer_device, local_rank)
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"the rank with LOCAL_RANK={local_rank} has no GPU: {torch.cuda.device_count()} visible; "
                          f"start torchrun with --nproc_per_node at most the GPUs of a node")
    return torch.device("cuda", local_rank)


@contextlib.contextmanager
def session(trainer_device: str) -> Iterator[Optional[Session]]:
    """Joins torchrun's process group for the duration (NCCL for a CUDA trainer, else gloo) and makes it the
    `active()` session; yields None outside torchrun (or with one process). The group is destroyed on the way out,
    after a last barrier when the block ended normally."""
    global _ACTIVE
    rank, local_rank, world = env_rank()
    if world <= 1:
        yield None
        return
    if _ACTIVE is not None:
        raise RuntimeError("a distributed session is active already")
    device = session_device(trainer_device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
    wait_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    _ACTIVE = Session(rank, local_rank, world, backend, device, wait_group)
    log.info("rank %d of %d on %s (%s)", rank, world, device, backend)
    try:
        yield _ACTIVE
        _ACTIVE.barrier()
    finally:
        _ACTIVE = None
        dist.destroy_process_group()


# ---- BatchNorm over the global batch --------------------------------------------------------------------------


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """SyncBatchNorm for CPU processes (gloo), which torch's SyncBatchNorm refuses: in training, the mean and
    variance over every rank's batch (two differentiable all-reduces), so that the gradient is the one of BatchNorm
    over the global batch; in eval, plain BatchNorm on the running statistics. Same parameters, buffers and state
    dict keys as the BatchNorm it replaces."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        count = input.new_tensor([input.numel() // channels])
        stats = _AllReduceSum.apply(torch.cat([input.sum(dims), count]))  # sums, then the global count
        n = stats[-1].detach()
        mean = stats[:-1] / n
        centred = input - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n  # biased, as BatchNorm normalises
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        return out


def _replace_batchnorm(model: nn.Module, make: Callable[[nn.modules.batchnorm._BatchNorm], nn.Module]
                       ) -> list[tuple[nn.Module, str, nn.Module]]:
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                    child, (nn.SyncBatchNorm, CpuSyncBatchNorm)):
                setattr(parent, name, make(child))
                swapped.append((parent, name, child))
    return swapped


def _share(bn: nn.modules.batchnorm._BatchNorm, sync: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """`sync` with `bn`'s own parameter and buffer tensors (training either trains both)."""
    if bn.affine:
        with torch.no_grad():
            sync.weight, sync.bias = bn.weight, bn.bias
    sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
    sync.num_batches_tracked = bn.num_batches_tracked
    sync.train(bn.training)
    return sync


@contextlib.contextmanager
def sync_batchnorm(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Inside, every trainable BatchNorm of `model` (FrozenBatchNorm2d is none) normalises over the global batch:
    torch's SyncBatchNorm on CUDA, `CpuSyncBatchNorm` on CPU. They share the originals' parameters and buffers,
    and the originals are put back on the way out, so the model trained is a plain one again (its checkpoint, its
    export and RepVGG's BN folding see BatchNorm2d)."""
    def make(bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
        cls = nn.SyncBatchNorm if device.type == "cuda" else CpuSyncBatchNorm
        return _share(bn, cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats))

    swapped = _replace_batchnorm(model, make)
    try:
        yield model
    finally:
        for parent, name, original in swapped:
            setattr(parent, name, original)
