"""Training and tracking speed of the baseline and the user's head at a trainer preset (a benchmark, not a test).

    python benchmarks/bench_trial.py                 # CPU preset, 20 timed steps
    python benchmarks/bench_trial.py --trainer gpu --device cuda

Prints training steps/s at full and head fidelity (the head-fidelity step runs on cached trunk features, so its
cost is the head's alone), their ratio (what a head trial costs against a full one per step), and tracking FPS
(end to end and model only) on the synthetic val split.
"""
from __future__ import annotations

import argparse
import tempfile
import time

from typing import Iterable, Iterator

import torch

from tracker.config import compose
from tracker.evaluation import StarkTracker, track_sequence
from tracker.engine import Engine
from tracker.train import Trial, build_optimizer


def _steps_per_s(trial: Trial, optimizer: torch.optim.Optimizer, batches: Iterable, forward, steps: int) -> float:
    """Steps per second of the training engine (the loop trials run) after two warm-up steps."""
    engine = Engine(optimizer, trial.precision, trial.t.giou_weight, trial.t.l1_weight, trial.t.grad_clip, 1,
                    progress=False)
    sync = torch.cuda.synchronize if trial.device.type == "cuda" else (lambda: None)
    marks = []

    def timed(batches: Iterable) -> Iterator:
        for i, batch in enumerate(batches):
            if i == 2:  # after warm-up
                sync()
                marks.append(time.perf_counter())
            yield batch

    engine.run_epoch(timed(batches), forward, 0, steps=steps + 2)
    sync()
    return steps / (time.perf_counter() - marks[0])


def full_steps_per_s(trial: Trial, steps: int) -> float:
    model = trial.build_model().train()
    loader = trial.pair_loader("train", trial.t.batch_size * (steps + 2), seed=0)
    return _steps_per_s(trial, build_optimizer(model, trial.t), loader, trial.pair_forward(model), steps)


def head_steps_per_s(trial: Trial, steps: int) -> float:
    model = trial.build_model().train()
    f = model.search_feat
    features = torch.randn(trial.t.batch_size, model.bottleneck.out_channels, f, f, device=trial.device)
    target = torch.tensor([[0.4, 0.4, 0.6, 0.6]], device=trial.device).expand(trial.t.batch_size, -1)
    optimizer = build_optimizer(model.head, trial.t)  # what a head-fidelity trial trains, in the layout it trains in
    with trial.head_layout(model, head_only=True) as layout:
        return _steps_per_s(trial, optimizer, [(features, target)] * (steps + 2), trial.head_forward(model, layout),
                            steps)


def tracking_fps(trial: Trial, sequences: int) -> tuple[float, float]:
    from tracker.data.config import build_reader

    reader = build_reader(trial.cfg.data)
    tracker = StarkTracker(trial.build_model(), trial.device)
    frames, started = 0, time.perf_counter()
    for name in reader.sequence_names()[:sequences]:
        sequence = reader.sequence(name)
        track_sequence(tracker, sequence)
        frames += len(sequence.frames) - 1
    return frames / (time.perf_counter() - started), frames / tracker.model_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trainer", default="cpu")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sequences", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for head in ("repvgg", "dsconv"):
            overrides = [f"trainer={args.trainer}", f"head={head}", "trainer.fidelity=full"]
            if args.device:
                overrides.append(f"trainer.device={args.device}")
            trial = Trial(compose("train", overrides), tmp, progress=False)
            full, head_only = full_steps_per_s(trial, args.steps), head_steps_per_s(trial, args.steps)
            fps, model_fps = tracking_fps(trial, args.sequences)
            rows.append((head, full, head_only, full / head_only, fps, model_fps))
    t = trial.t
    print(f"trainer={args.trainer} device={trial.device} batch={t.batch_size} crops={t.template_size}/{t.search_size} "
          f"threads={torch.get_num_threads()}")
    print(f"{'head':<8} {'full steps/s':>13} {'head steps/s':>13} {'head/full cost':>15} {'track FPS':>10} "
          f"{'model FPS':>10}")
    for head, full, head_only, ratio, fps, model_fps in rows:
        print(f"{head:<8} {full:>13.2f} {head_only:>13.1f} {ratio:>15.3f} {fps:>10.1f} {model_fps:>10.1f}")


if __name__ == "__main__":
    main()
