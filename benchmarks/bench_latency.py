"""How steady measured latency is, and where MACs mislead (a benchmark, not a test).

    python benchmarks/bench_latency.py                              # CPU preset sizes (64 / 128), 3 runtimes
    python benchmarks/bench_latency.py --sizes 128 320 --runtimes torch --repeat 2
    python benchmarks/bench_latency.py --device cuda --runtimes torch deployed onnxruntime

For a fixed set of heads, `tracker.latency.measure_latency` (what a sweep runs before training: rounds that time
the candidate, then STARK-Lightning's own head) is repeated `--repeat` times on each runtime. Printed per head:
MACs, the median head and frame latency over the repeats, the coefficient of variation (std / mean across the
repeats) of the absolute frame figure and of the candidate / reference frame ratio (is the ratio steadier on a
shared machine?), and per runtime Kendall's tau between head MACs and head latency.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from heads.cost import profile_head  # noqa: E402
from search.report.stats import kendall_tau  # noqa: E402
from tracker.config import LatencyConf, compose  # noqa: E402
from tracker.latency import build_with_head, device_name, measure_latency, reference_head, resolve_device  # noqa: E402

HEADS = {  # label -> head overrides
    "repvgg x2 w128 (baseline)": ["head=repvgg"],
    "dsconv x2 w64 relu6 (user)": ["head=dsconv"],
    "repvgg x6 w32": ["head=repvgg", "head.num_blocks=6", "head.channels=32"],
    "repvgg x2 w64": ["head=repvgg", "head.channels=64"],
    "dsconv x6 w128 k7": ["head=dsconv", "head.num_blocks=6", "head.channels=128", "head.kernel_size=7"],
    "dsconv x2 w32": ["head=dsconv", "head.channels=32"],
    "mbconv x3 w64 e6": ["head=mbconv", "head.num_blocks=3", "head.channels=64", "head.expansion=6"],
    "mbconv x2 w128 e4": ["head=mbconv", "head.channels=128", "head.expansion=4"],
}


def cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtimes", nargs="+", default=list(LatencyConf.RUNTIMES))
    parser.add_argument("--sizes", nargs=2, type=int, default=[64, 128], metavar=("TEMPLATE", "SEARCH"))
    parser.add_argument("--repeat", type=int, default=3, help="whole measurements per head and runtime")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=30, help="timed calls per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sizes = [f"model.template_size={args.sizes[0]}", f"model.search_size={args.sizes[1]}",
             f"data.processing.template.size={args.sizes[0]}", f"data.processing.search.size={args.sizes[1]}"]
    print(f"device: {device_name(device)} ({device.type}); torch {torch.__version__}; sizes {args.sizes}; "
          f"{args.threads} thread(s); {args.repeat} measurements x {args.rounds} rounds x {args.calls} calls")
    for runtime in args.runtimes:
        conf = LatencyConf(runtime=runtime, device=args.device, threads=args.threads, repeats=args.calls,
                           rounds=args.rounds)
        print(f"\n== {runtime} ==")
        print(f"{'head':<28}{'head MACs':>12}{'head ms':>9}{'frame ms':>10}{'share':>7}{'CV frame':>10}"
              f"{'CV ratio':>10}{'ratio':>8}")
        macs, head_ms = [], []
        for label, overrides in HEADS.items():
            cfg = compose("train", ["trainer=cpu", *overrides, *sizes])
            model = build_with_head(cfg.model, cfg.head)
            reference = build_with_head(cfg.model, reference_head())
            runs = [measure_latency(model, conf, reference) for _ in range(args.repeat)]
            geometry = model.head_geometry(model.encoder.linear2.out_features, model.search_size)
            head_macs = profile_head(model.head, geometry["in_channels"], geometry["feat_size"])["head_macs"]
            head = statistics.median(r.head_ms for r in runs)
            frame = statistics.median(r.frame_ms for r in runs)
            macs.append(head_macs)
            head_ms.append(head)
            print(f"{label:<28}{head_macs / 1e6:>10.2f} M{head:>9.3f}{frame:>10.3f}{100 * head / frame:>6.1f}%"
                  f"{100 * cv([r.frame_ms for r in runs]):>9.1f}%{100 * cv([r.frame_ratio for r in runs]):>9.1f}%"
                  f"{statistics.median(r.frame_ratio for r in runs):>8.3f}")
        tau, p = kendall_tau(macs, head_ms)
        print(f"Kendall's tau, head MACs vs head latency ({runtime}): {tau:.2f} (p {p:.3f}, {len(macs)} heads)")


if __name__ == "__main__":
    main()
