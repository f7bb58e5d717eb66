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

import torch
from torchvision.ops import box_convert

from tracker.config import compose
from tracker.evaluate import StarkTracker, track_sequence
from tracker.losses import box_loss
from tracker.train import Trial, build_optimizer


def full_steps_per_s(trial: Trial, steps: int) -> float:
    model = trial.build_model().train()
    optimizer = build_optimizer(model, trial.t)
    loader = trial.pair_loader("train", trial.t.batch_size * (steps + 2), seed=0)
    started = None
    for i, batch in enumerate(loader):
        if i == 2:  # after warm-up
            started = time.perf_counter()
        batch = {k: v.to(trial.device, non_blocking=True) for k, v in batch.items()}
        with trial.precision.autocast():
            out = model(batch["template"], batch["template_mask"], batch["search"], batch["search_mask"])
        loss, _ = box_loss(out["corners"], box_convert(batch["search_box"], "xywh", "xyxy"))
        trial.step(model, optimizer, loss, 0, i)
    if trial.device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def head_steps_per_s(trial: Trial, steps: int) -> float:
    model = trial.build_model().train()
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=trial.t.lr, weight_decay=trial.t.weight_decay)
    f = model.search_feat
    features = torch.randn(trial.t.batch_size, model.bottleneck.out_channels, f, f, device=trial.device)
    target = torch.tensor([[0.4, 0.4, 0.6, 0.6]], device=trial.device).expand(trial.t.batch_size, -1)
    for i in range(steps + 2):
        if i == 2:
            if trial.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        with trial.precision.autocast():
            corners = model.head(features)
        loss, _ = box_loss(corners, target)
        trial.step(model, optimizer, loss, 0, i)
    if trial.device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


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
