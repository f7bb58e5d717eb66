"""STARK's training pairs: a template and a later search frame of one sequence, datasets mixed by ratio.

Every sample draws its randomness from a generator seeded by (seed, global index), so a batch is the same
whatever the number of workers, and an epoch is the same after a resume. `EpochSampler` hands out global
indices epoch * pairs_per_epoch + i, which lets persistent workers see each epoch's new samples.
"""
from __future__ import annotations

import random
import warnings
from typing import Iterator, Sequence as Seq

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import Sequence, TrackingDataset
from .processing import PairProcessing


def sample_frame_pair(sequence: Sequence, max_gap: int, rng: np.random.Generator, is_video: bool = True
                      ) -> tuple[int, int] | None:
    """(template, search) frame indices: both visible, template strictly before search, at most `max_gap`
    apart ("causal", as STARK samples). A static image pairs with itself. None when no such pair exists."""
    visible = np.flatnonzero(sequence.visible)
    if not is_video:
        return (int(visible[0]),) * 2 if len(visible) else None
    if len(visible) < 2:
        return None
    starts = visible[:-1][np.diff(visible) <= max_gap]  # visible frames with a visible successor in range
    if not len(starts):
        return None
    template = int(starts[rng.integers(len(starts))])
    lo, hi = np.searchsorted(visible, [template + 1, template + max_gap + 1])
    return template, int(visible[rng.integers(lo, hi)])


class PairDataset(Dataset):
    """`sources`: (reader, ratio) pairs. Item `index` (any non-negative int) is one processed pair: the
    tensors of `PairProcessing` plus `index`. Sequences without a valid pair are skipped with one warning."""

    def __init__(self, sources: Seq[tuple[TrackingDataset, float]], processing: PairProcessing | None = None,
                 pairs_per_epoch: int = 60000, max_gap: int = 200, seed: int = 0, max_tries: int = 100):
        sources = [(d, float(r)) for d, r in sources if float(r) > 0]
        if not sources:
            raise ValueError("no dataset with a positive ratio to sample pairs from")
        empty = [d.name for d, _ in sources if len(d) == 0]
        if empty:
            raise ValueError(f"datasets with no sequence: {empty}")
        if pairs_per_epoch < 1 or max_gap < 1:
            raise ValueError(f"pairs_per_epoch={pairs_per_epoch} and max_gap={max_gap} must be positive")
        self.datasets = [d for d, _ in sources]
        ratios = np.array([r for _, r in sources])
        self.probabilities = ratios / ratios.sum()
        self.processing = processing or PairProcessing()
        self.pairs_per_epoch, self.max_gap, self.seed, self.max_tries = pairs_per_epoch, max_gap, seed, max_tries
        self._skipped: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return self.pairs_per_epoch

    def sample_frames(self, rng: np.random.Generator) -> tuple[Sequence, int, int]:
        for _ in range(self.max_tries):
            dataset = self.datasets[rng.choice(len(self.datasets), p=self.probabilities)]
            sequence = dataset.sequence(int(rng.integers(len(dataset))))
            pair = sample_frame_pair(sequence, self.max_gap, rng, dataset.is_video)
            if pair is not None:
                return sequence, *pair
            if (dataset.name, sequence.name) not in self._skipped:
                self._skipped.add((dataset.name, sequence.name))
                warnings.warn(f"{dataset.name} sequence {sequence.name} skipped: no two visible frames within "
                              f"{self.max_gap} frames" if dataset.is_video else
                              f"{dataset.name} sequence {sequence.name} skipped: no visible target", stacklevel=2)
        raise RuntimeError(f"no valid pair in {self.max_tries} draws: the datasets have too few visible frames")

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, int(index)))
        sequence, t, s = self.sample_frames(rng)
        template_image = sequence.image(t)
        search_image = template_image if s == t else sequence.image(s)
        sample = self.processing(template_image, sequence.boxes[t], search_image, sequence.boxes[s], rng)
        sample["index"] = torch.tensor(int(index))
        return sample


class EpochSampler(Sampler[int]):
    """Yields global indices epoch * n .. (epoch + 1) * n - 1 and moves to the next epoch after each pass.
    `set_epoch(k)` starts (or resumes) at epoch k.

    Data-parallel (`world_size` > 1): rank `rank` yields its share of every global batch of `batch_size` (the
    trainer's batch, split evenly): from global batch k = indices epoch * n + k * B .. + B - 1, the `B / world_size`
    consecutive ones at rank * B / world_size. The ranks' shares are disjoint and their union, batch by batch, is
    the single process's epoch (last partial global batch dropped, as the single process's loader drops it), so
    the ranks' loaders at batch B / world_size together load what one loader at batch B loads."""

    def __init__(self, pairs_per_epoch: int, epoch: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None):
        if world_size > 1:
            if batch_size is None or batch_size % world_size:
                raise ValueError(f"a batch of {batch_size} does not split evenly over {world_size} processes: "
                                 f"make trainer.batch_size (the global batch) a multiple of the process count")
            if not 0 <= rank < world_size:
                raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n, self.epoch = pairs_per_epoch, epoch
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.n
        return (self.n // self.batch_size) * (self.batch_size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        start, self.epoch = self.epoch * self.n, self.epoch + 1
        if self.world_size == 1:
            return iter(range(start, start + self.n))
        share = self.batch_size // self.world_size
        return iter(start + k * self.batch_size + self.rank * share + i
                    for k in range(self.n // self.batch_size) for i in range(share))


def _init_worker(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers decode and crop; many intra-op threads per worker only contend
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: PairDataset, batch_size: int = 16, num_workers: int = 0, device: str | torch.device | None
                = None, epoch: int = 0, drop_last: bool = True, prefetch_factor: int = 2, rank: int = 0,
                world_size: int = 1) -> DataLoader:
    """A DataLoader over `dataset`: EpochSampler order, seeded workers (persistent), memory pinned when
    the target device is CUDA (by default: when CUDA is available). `loader.sampler.set_epoch(k)` resumes.
    `world_size` > 1: `batch_size` is the global batch, and this is rank `rank`'s loader of its share, batches of
    `batch_size / world_size` (see EpochSampler; training only: `drop_last`)."""
    cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    generator = torch.Generator()
    generator.manual_seed(dataset.seed)
    workers = {"persistent_workers": True, "prefetch_factor": prefetch_factor} if num_workers > 0 else {}
    if world_size > 1 and not drop_last:
        raise ValueError("a data-parallel loader drops the last partial batch (drop_last=True)")
    sampler = EpochSampler(len(dataset), epoch, rank, world_size, batch_size)
    return DataLoader(dataset, batch_size=batch_size // world_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=cuda, drop_last=drop_last, worker_init_fn=_init_worker, generator=generator,
                      **workers)
