"""Per-frame latency of the deployed tracker against STARK's own eager deploy model (a benchmark, not a test).

    python benchmarks/bench_tracker.py                       # CPU, 1 and 2 threads, both heads
    python benchmarks/bench_tracker.py --repeats 100 --threads 1
    python benchmarks/bench_tracker.py --device cuda

A frame is the search branch against a cached template (backbone, bottleneck, encoder, head, box decoding) at
the model's sizes (128 / 320 by default), batch 1. Paths, all on the same weights (random, reparameterised
to deploy form):

- `STARK reference`: STARK-Lightning as STARK's own code computes it (`benchmarks/stark_reference.py`:
  sequence-first tokens, `nn.MultiheadAttention` with its attention weights, positions rebuilt per call), under
  `torch.no_grad()` as STARK's tracker runs it;
- `ours eager`: our `StarkLightning` in deploy form, under `torch.no_grad()`;
- `ours deployed`: `tracker.deploy.DeployedTracker` (channels-last, fused conv + activation, template-only
  work cached per sequence, weight-only work precomputed), eager PyTorch;
- `ours compiled` (`--compile inductor`, the default; `--compile none` skips it): the same under
  `torch.compile` with frozen weights, compiled once per head before timing;
- `ONNX Runtime`: `tracker.export`'s graphs under ONNX Runtime with as many intra-op threads.

The paths are timed round-robin, one call each per repeat, so that load drift on a shared machine hits all of
them alike. Printed per head and thread count: median and p90 latency, FPS, speed-up over the STARK reference,
the head's time and share of the frame (where the head can be run alone), and the largest absolute box
difference against ours eager (every path must stay within 1e-4).
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from heads import reparameterize  # noqa: E402
from stark_reference import build_stark_reference  # noqa: E402
from tracker.deploy import DeployedTracker  # noqa: E402
from tracker.export import example_inputs  # noqa: E402
from tracker.model import StarkLightning  # noqa: E402

HEADS = {"repvgg": "the baseline (2 RepVGG blocks 128 wide, 3x3 predictor)",
         "dsconv": "the user's (2 DSConv blocks 128 -> 64 -> 64, ReLU6, 1x1 predictor)"}
TOLERANCE = 1e-4
REFERENCE, EAGER, DEPLOYED = "STARK reference", "ours eager", "ours deployed"
LOW_PRECISION = ("bf16", "fp16")  # autocast paths: their box difference is reported, not held to TOLERANCE


def build_model(head: str, template_size: int, search_size: int, seed: int = 0) -> StarkLightning:
    """The head's preset from conf/head/ with random weights (tests/test_deploy.py checks trained-like BN
    statistics; speed does not depend on the values)."""
    from hydra.utils import instantiate

    from tracker.config import compose

    torch.manual_seed(seed)
    cfg = compose("profile", [f"head={head}", f"model.template_size={template_size}",
                              f"model.search_size={search_size}"])
    return instantiate(cfg.model).eval()


class Timed:
    """One path: `frame()` runs one search-branch call against its cached template; `head()` (optional) runs its
    head alone on that frame's head input. Collects their latencies (s). After each call the benchmark sleeps
    `settle_s`, so that this path's worker threads are idle before the next path starts: ONNX Runtime's
    workers spin for a while after each run (about 0.2 s measured here), and a PyTorch path timed while they
    spin runs on fewer cores (at 2 threads on 2 cores, the STARK reference ran 2x slower right after an ONNX
    Runtime call, 1.0x again after 0.2 s idle)."""

    def __init__(self, name: str, frame: Callable[[], dict], head: Callable[[], object] | None = None,
                 settle_s: float = 0.01):
        self.name, self.frame, self.head, self.settle_s = name, frame, head, settle_s
        self.times: list[float] = []
        self.head_times: list[float] = []


def _no_grad(fn: Callable) -> Callable:
    def run():
        with torch.no_grad():
            return fn()
    return run


def torch_paths(model: StarkLightning, device: torch.device, inputs, compile_backend: str | None,
                amp: tuple[str, ...] = ()) -> list[Timed]:
    z, zm, x, xm = inputs
    reference = build_stark_reference(model).to(device)
    plain = reparameterize(copy.deepcopy(model).eval()).to(device)
    deployed = DeployedTracker(model, device)
    with torch.no_grad():
        ref_template, plain_template = reference.encode_template(z, zm), plain.encode_template(z, zm)
        ref_features = reference.forward_backbone(x, "search", xm)
        q, k, v, kpm = reference.get_qkv([ref_template, ref_features])
        memory = reference.transformer(q, k, v, key_padding_mask=kpm)
        ref_head_input = memory[-reference.feat_len_s:].permute(1, 2, 0).reshape(
            1, -1, reference.feat_sz_s, reference.feat_sz_s).contiguous()
        plain_head_input = plain.search_features(x, xm, plain_template)
    deployed_template = deployed.encode_template(z, zm)
    deployed_head_input = plain_head_input.contiguous(memory_format=deployed.memory_format)
    paths = [
        Timed(REFERENCE, lambda: reference.track(x, xm, ref_template),
              _no_grad(lambda: reference.box_head(ref_head_input))),
        Timed(EAGER, _no_grad(lambda: plain.track(x, xm, plain_template)),
              _no_grad(lambda: plain.head(plain_head_input))),
        Timed(DEPLOYED, lambda: deployed.track(x, xm, deployed_template),
              torch.inference_mode()(lambda: deployed.head(deployed_head_input))),
    ]
    if compile_backend:
        compiled = DeployedTracker(model, device, compile=compile_backend)
        started = time.perf_counter()
        compiled.track(x, xm, deployed_template)
        print(f"  torch.compile({compile_backend}): first call {time.perf_counter() - started:.1f} s", flush=True)
        paths.append(Timed(f"ours compiled ({compile_backend})", lambda: compiled.track(x, xm, deployed_template)))
    for name in amp:  # lower precision: its box difference is reported, not held to the fp32 tolerance
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[name]

        def autocast_frame(dtype=dtype):
            with torch.autocast(device.type, dtype=dtype):
                return deployed.track(x, xm, deployed_template)
        paths.append(Timed(f"{DEPLOYED} {name}", autocast_frame))
    return paths


def onnx_path(model: StarkLightning, device: torch.device, inputs, threads: int, out_dir: Path,
              settle_s: float) -> Timed | None:
    try:
        from tracker.export import OnnxTracker, export_onnx
    except ImportError as error:  # not written yet, or onnx / onnxruntime missing
        print(f"ONNX Runtime: skipped (tracker.export not available: {error})")
        return None
    if not (out_dir / "search.onnx").is_file():
        export_onnx(model, out_dir)
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else None
    tracker = OnnxTracker(out_dir, threads=threads, providers=providers)
    z, zm, x, xm = inputs
    template = tracker.encode_template(z, zm)
    return Timed("ONNX Runtime", lambda: tracker.track(x, xm, template), settle_s=settle_s)


def run_round_robin(paths: list[Timed], device: torch.device, warmup: int, repeats: int) -> None:
    """One call of each path per repeat, each followed by its path's `settle_s` of sleep (not timed)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn: Callable, settle_s: float) -> float:
        sync()
        started = time.perf_counter()
        fn()
        sync()
        elapsed = time.perf_counter() - started
        time.sleep(settle_s)
        return elapsed

    for i in range(warmup + repeats):
        for path in paths:
            t = timed(path.frame, path.settle_s)
            h = timed(path.head, path.settle_s) if path.head is not None else None
            if i >= warmup:
                path.times.append(t)
                if h is not None:
                    path.head_times.append(h)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(paths: list[Timed], head: str, threads: int, device: torch.device, warmup: int, repeats: int):
    """Times the paths round-robin; one row per path: (head, threads, path, median ms, p90 ms, speed-up over the
    STARK reference, head ms or None, max abs box difference against ours eager)."""
    with torch.no_grad():
        expected = next(p for p in paths if p.name == EAGER).frame()["boxes"].float().cpu()
    run_round_robin(paths, device, warmup, repeats)
    reference_ms = statistics.median(paths[0].times) * 1e3
    rows = []
    for path in paths:
        median_ms = statistics.median(path.times) * 1e3
        diff = (path.frame()["boxes"].float().cpu() - expected).abs().max().item()
        head_ms = statistics.median(path.head_times) * 1e3 if path.head_times else None
        rows.append((head, threads, path.name, median_ms, percentile(path.times, 0.9) * 1e3,
                     reference_ms / median_ms, head_ms, diff))
    return rows


def report(rows: list[tuple]) -> None:
    print("| head | threads | path | median ms | p90 ms | FPS | vs STARK | head ms (share) | max abs box diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for head, threads, name, median_ms, p90_ms, speedup, head_ms, diff in rows:
        share = f"{head_ms:.2f} ({head_ms / median_ms:.0%})" if head_ms is not None else "-"
        print(f"| {head} | {threads} | {name} | {median_ms:.2f} | {p90_ms:.2f} | {1e3 / median_ms:.1f} | "
              f"{speedup:.2f}x | {share} | {diff:.1e} |")
    print()
    ours = [r for r in rows if r[2] != REFERENCE]
    for head, threads, name, *_, diff in ours:
        if diff > TOLERANCE and not name.endswith(LOW_PRECISION):
            print(f"FAIL {head}, {threads} thread(s), {name}: boxes differ from {EAGER} by {diff:.1e} > {TOLERANCE}")
    for head, threads, name, _, _, speedup, *_ in ours:
        if name == DEPLOYED:
            print(f"{head}, {threads} thread(s): {name} (eager PyTorch) {speedup:.2f}x over the STARK reference "
                  f"(goal 1.25x): {'met' if speedup >= 1.25 else 'NOT met'}")
    for head, threads in dict.fromkeys((r[0], r[1]) for r in ours):
        exact = [r for r in ours if r[:2] == (head, threads) and r[-1] <= TOLERANCE]  # same boxes only
        _, _, name, _, _, speedup, *_ = max(exact, key=lambda r: r[5])
        print(f"{head}, {threads} thread(s): fastest path {name} {speedup:.2f}x over the STARK reference "
              f"(goal 2x): {'met' if speedup >= 2 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--template-size", type=int, default=128)
    parser.add_argument("--search-size", type=int, default=320)
    parser.add_argument("--compile", default="inductor", choices=["inductor", "none"],
                        help="also time DeployedTracker under torch.compile with this backend (none: skip)")
    parser.add_argument("--onnx-settle-ms", type=float, default=300.0,
                        help="idle time after each ONNX Runtime call, so its spinning workers stop before the "
                             "next path runs")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime path")
    parser.add_argument("--amp", nargs="*", choices=LOW_PRECISION, default=None,
                        help="also time the deployed tracker under autocast at these precisions (default: bf16 "
                             "and fp16 on CUDA, none on CPU)")
    args = parser.parse_args()
    amp = tuple(args.amp if args.amp is not None else (LOW_PRECISION if args.device.startswith("cuda") else ()))
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}, "
          f"{args.template_size}/{args.search_size}, batch 1, template cached; {args.repeats} repeats after "
          f"{args.warmup} warm-up, paths interleaved")
    print("heads: " + "; ".join(f"{name}: {HEADS[name]}" for name in args.heads) + "\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for head in args.heads:
            model = build_model(head, args.template_size, args.search_size)
            inputs = [t.to(device) for t in example_inputs(model).values()]  # template image + mask, search ...
            torch_timed = torch_paths(model, device, inputs, None if args.compile == "none" else args.compile, amp)
            for threads in args.threads:
                torch.set_num_threads(threads)
                paths = [Timed(p.name, p.frame, p.head, p.settle_s) for p in torch_timed]
                if not args.no_onnx:
                    ort = onnx_path(model, device, inputs, threads, Path(tmp) / head, args.onnx_settle_ms / 1e3)
                    paths += [ort] if ort is not None else []
                rows += measure(paths, head, threads, device, args.warmup, args.repeats)
    report(rows)


if __name__ == "__main__":
    main()
