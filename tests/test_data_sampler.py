"""STARK pair sampling: frame constraints, dataset ratios, determinism across workers, the DataLoader."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tracker.data import (CropConf, EpochSampler, PairDataset, PairProcessing, Sequence, SyntheticConfig,
                          TrackingDataset, ensure_synthetic, make_loader, sample_frame_pair, GOT10k)

SMALL = PairProcessing(CropConf(32, 2.0), CropConf(64, 5.0, 0.5, 4.5))


def sequence(visible, name="s"):
    visible = np.asarray(visible, bool)
    return Sequence(name, [Path(f"{i}.jpg") for i in range(len(visible))], np.ones((len(visible), 4)), visible)


class Fake(TrackingDataset):
    """A reader over in-memory sequences (no images: only frame sampling is exercised)."""

    def __init__(self, root, name, sequences, is_video=True):
        super().__init__(root)
        self.name, self.is_video, self._seqs = name, is_video, sequences
        self._set_names([s.name for s in sequences])

    def _load(self, index):
        return self._seqs[index]


def test_pairs_are_causal_visible_and_within_max_gap():
    rng = np.random.default_rng(0)
    visible = np.zeros(400, bool)
    visible[[3, 50, 51, 120, 330, 390]] = True  # 120 -> 330 is farther than max_gap
    seq = sequence(visible)
    seen = set()
    for _ in range(2000):
        t, s = sample_frame_pair(seq, 100, rng)
        assert visible[t] and visible[s] and 0 < s - t <= 100
        seen.add((t, s))
    assert seen == {(3, 50), (3, 51), (50, 51), (51, 120), (50, 120), (330, 390)}
    assert sample_frame_pair(sequence([True, False, False, True]), 2, rng) is None
    assert sample_frame_pair(sequence([False, True, False]), 200, rng) is None
    assert sample_frame_pair(sequence([True]), 200, rng, is_video=False) == (0, 0)


def test_datasets_mix_by_ratio(tmp_path):
    a = Fake(tmp_path, "a", [sequence([True] * 5, "a1")])
    b = Fake(tmp_path, "b", [sequence([True] * 5, "b1")])
    pairs = PairDataset([(a, 3.0), (b, 1.0), (b, 0.0)], SMALL, pairs_per_epoch=10)
    counts = Counter(pairs.sample_frames(np.random.default_rng(i))[0].name for i in range(4000))
    assert abs(counts["a1"] / 4000 - 0.75) < 0.03
    with pytest.raises(ValueError, match="positive ratio"):
        PairDataset([(a, 0.0)], SMALL)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> GOT10k:
    cfg = SyntheticConfig(train_sequences=4, val_sequences=1, frames=12, width=96, height=72, workers=1)
    return GOT10k(ensure_synthetic(cfg, tmp_path_factory.mktemp("cache"), progress=False), "train")


def test_items_are_deterministic_and_well_formed(synthetic):
    pairs = PairDataset([(synthetic, 1.0)], SMALL, pairs_per_epoch=8, max_gap=200, seed=5)
    a, b = pairs[3], PairDataset([(synthetic, 1.0)], SMALL, pairs_per_epoch=8, seed=5)[3]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(pairs[4]["search"], a["search"])
    assert a["template"].shape == (3, 32, 32) and a["search"].shape == (3, 64, 64)
    assert a["template"].dtype == torch.float32 and a["search_mask"].dtype == torch.bool
    assert a["search_box"].shape == (4,) and (a["search_box"][2:] > 0).all()
    other_seed = PairDataset([(synthetic, 1.0)], SMALL, pairs_per_epoch=8, seed=6)[3]
    assert not torch.equal(other_seed["search"], a["search"])


def test_loader_batches_are_the_same_with_0_and_2_workers(synthetic):
    def batches(workers):
        pairs = PairDataset([(synthetic, 1.0)], SMALL, pairs_per_epoch=8, seed=1)
        loader = make_loader(pairs, batch_size=4, num_workers=workers, device="cpu")
        epochs = [[b for b in loader] for _ in range(2)]
        return epochs

    serial, parallel = batches(0), batches(2)
    assert len(serial[0]) == 2 and serial[0][0]["search"].shape == (4, 3, 64, 64)
    for epoch_s, epoch_p in zip(serial, parallel):
        for bs, bp in zip(epoch_s, epoch_p):
            for key in bs:
                assert torch.equal(bs[key], bp[key]), key
    # the second epoch draws new pairs (global indices continue), the same in both loaders
    assert serial[1][0]["index"].tolist() == [8, 9, 10, 11]
    assert not torch.equal(serial[0][0]["search"], serial[1][0]["search"])


def test_epoch_sampler_resumes_at_an_epoch():
    sampler = EpochSampler(3)
    assert list(sampler) == [0, 1, 2] and list(sampler) == [3, 4, 5]
    sampler.set_epoch(5)
    assert list(sampler) == [15, 16, 17] and len(sampler) == 3


def test_pinned_memory_only_for_cuda(synthetic):
    pairs = PairDataset([(synthetic, 1.0)], SMALL, pairs_per_epoch=4)
    assert not make_loader(pairs, 2, device="cpu").pin_memory
    assert make_loader(pairs, 2, device="cuda").pin_memory
