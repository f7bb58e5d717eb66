"""Measured latency of a candidate at batch 1, known before training: it depends on the architecture, the sizes,
the runtime and the machine, not on the weights, so a sweep can rank, bound or optimise it like MACs.

`candidate_latency(cfg)` builds the config's model untrained, measures the head alone and the per-frame search
branch (backbone, bottleneck, encoder against a cached template, head, box decoding) on `cfg.latency`'s runtime:

- `torch`: the reparameterised eager model (`heads.cost.deploy_copy`) under `torch.inference_mode`;
- `deployed`: `tracker.deploy.DeployedTracker`, the evaluation's fast path (channels-last, fused conv + act);
- `onnxruntime`: `tracker.export`'s graphs under ONNX Runtime (the CUDA provider when `device` is CUDA and this
  build has it).

Noise: on a shared machine another process can slow one block of calls by 2x. Each round times the candidate
and a fixed reference (STARK-Lightning's own head at the same sizes) back to back, so drift hits both; the
ratio's median over rounds (`frame_latency_ratio`) is the steadier figure, the absolute median the one a user
quotes. `frame_latency_spread` is the relative range of the per-round medians: how much a single round can
mislead. Results are cached under <runs>/latency/, keyed by everything that decides them.
"""
from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .config import LatencyConf, runs_root
from .io import atomic_write_text, file_lock, stable_hash

log = logging.getLogger(__name__)

LATENCY_BLOCKS = 5  # median_latency_ms splits its timed calls into at most this many blocks


@torch.no_grad()
def median_latency_ms(fn: Callable[[], Any], device: torch.device, warmup: int = 10, repeats: int = 50) -> float:
    """Median time of one `fn()` call in ms, by `torch.utils.benchmark.Timer`, which synchronises the accelerator
    around what it times: `warmup` calls, then `repeats` timed calls (rounded down to a multiple of the block
    count) in up to `LATENCY_BLOCKS` equal blocks. Each block gives one per-call time; their median is robust to
    a block disturbed by other work, and no synchronisation is charged to each call (a throughput-style figure:
    the benchmarks and the export check use it; sweeps use `measure_latency`)."""
    from torch.utils.benchmark import Measurement, Timer  # imported when timing: it loads the C++ extension tools

    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    for _ in range(warmup):
        fn()
    blocks = min(repeats, LATENCY_BLOCKS)
    measurement, = Measurement.merge(timer.timeit(repeats // blocks) for _ in range(blocks))
    return measurement.median * 1e3


@dataclass(frozen=True)
class Latency:
    """One candidate's measured latency (ms) and how far to trust it."""

    head_ms: float  # median per call over every round
    head_p90_ms: float
    frame_ms: float
    frame_p90_ms: float
    head_share: float  # head_ms / frame_ms: the most a faster head can take off a frame
    frame_spread: float  # (max - min) / median of the per-round frame medians
    head_ratio: Optional[float]  # median over rounds of candidate / reference (None without a reference)
    frame_ratio: Optional[float]
    frame_ratio_spread: Optional[float]  # the same spread for the ratio
    runtime: str
    device: str  # the machine's processor or GPU name
    threads: int

    def figures(self) -> dict[str, Any]:
        """Under the names objectives, budgets and the report use."""
        return {"head_latency_ms": self.head_ms, "head_latency_p90_ms": self.head_p90_ms,
                "frame_latency_ms": self.frame_ms, "frame_latency_p90_ms": self.frame_p90_ms,
                "head_latency_share": self.head_share, "frame_latency_spread": self.frame_spread,
                **({"head_latency_ratio": self.head_ratio} if self.head_ratio is not None else {}),
                **({"frame_latency_ratio": self.frame_ratio} if self.frame_ratio is not None else {}),
                **({"frame_latency_ratio_spread": self.frame_ratio_spread}
                   if self.frame_ratio_spread is not None else {}),
                "latency_runtime": self.runtime, "latency_device": self.device, "latency_threads": self.threads}


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; a CUDA device that is not there is refused, named."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is not available here (no CUDA); use device=cpu or device=auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """What the figures were measured on: the GPU's name, or the CPU's model (latency is per machine)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(model: nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
    from .export import example_inputs

    return {k: v.to(device) for k, v in example_inputs(model).items()}


def _head_input(model: nn.Module, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    channels = model.encoder.linear2.out_features
    return torch.randn(1, channels, model.search_feat, model.search_feat, generator=gen).to(device)


def _runners(model: nn.Module, runtime: str, device: torch.device, threads: int,
             workdir: Path) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(head call, frame call) for `model` on `runtime`, inputs prepared, template cached."""
    from heads.cost import deploy_copy

    if runtime == "torch":
        deployed = deploy_copy(model).to(device)
        x, head_in = _inputs(deployed, device), _head_input(deployed, device)
        with torch.inference_mode():
            template = deployed.encode_template(x["template_image"], x["template_mask"])

        def frame() -> Any:
            with torch.inference_mode():
                return deployed.track(x["search_image"], x["search_mask"], template)["boxes"]

        def head() -> Any:
            with torch.inference_mode():
                return deployed.head(head_in)
        return head, frame
    if runtime == "deployed":
        from .deploy import DeployedTracker

        tracker = DeployedTracker(model, device)
        x = _inputs(tracker, device)
        head_in = _head_input(deploy_copy(model), device).contiguous(memory_format=tracker.memory_format)
        cache = tracker.encode_template(x["template_image"], x["template_mask"])

        def head() -> Any:
            with torch.inference_mode():
                return tracker.head(head_in)
        return head, lambda: tracker.track(x["search_image"], x["search_mask"], cache)["boxes"]
    if runtime == "onnxruntime":
        import onnxruntime as ort

        from .export import OnnxTracker, _export, export_onnx, session_options

        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else None
        export_onnx(model, workdir / "frame")
        tracker = OnnxTracker(workdir / "frame", threads, providers)
        deployed = deploy_copy(model).cpu()
        x = _inputs(deployed, torch.device("cpu"))
        template = tracker.encode_template(x["template_image"], x["template_mask"])
        head_in = _head_input(deployed, torch.device("cpu"))
        with warnings.catch_warnings():  # the head's `return_maps` is a Python constant (False) when traced
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            _export(deployed.head, (head_in,), workdir / "head.onnx", ["features"], ["corners"], 17)
        session = ort.InferenceSession(str(workdir / "head.onnx"), session_options(threads),
                                       providers=tracker.providers)
        feed = {"features": head_in.numpy()}
        return (lambda: session.run(None, feed),
                lambda: tracker.track(x["search_image"], x["search_mask"], template)["boxes"])
    raise ValueError(f"latency.runtime={runtime!r} is not allowed: one of {list(LatencyConf.RUNTIMES)}")


def _time_calls(fn: Callable[[], Any], calls: int, sync: Callable[[], None]) -> list[float]:
    """Per-call wall times (s), each call synchronised: batch-1 latency as an online tracker sees it."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return times


def _spread(values: list[float]) -> float:
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle else float("nan")


def measure_latency(model: nn.Module, conf: LatencyConf, reference: Optional[nn.Module] = None) -> Latency:
    """Times `model` (a `StarkLightning`; its weights do not matter) and, interleaved round by round, `reference`
    on `conf.runtime`: `conf.warmup` untimed calls each, then `conf.rounds` rounds of `conf.repeats` calls of the
    head and of the frame for each model in turn."""
    device = resolve_device(conf.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    models = {"candidate": model, **({"reference": reference} if reference is not None else {})}
    with tempfile.TemporaryDirectory(prefix="lighttrack-latency-") as tmp, _torch_threads(conf.threads):
        runners = {name: _runners(m.eval(), conf.runtime, device, conf.threads, Path(tmp) / name)
                   for name, m in models.items()}
        for head, frame in runners.values():
            _time_calls(head, conf.warmup, sync)
            _time_calls(frame, conf.warmup, sync)
        samples: dict[str, dict[str, list[list[float]]]] = {n: {"head": [], "frame": []} for n in runners}
        for _ in range(conf.rounds):
            for name, (head, frame) in runners.items():
                samples[name]["head"].append(_time_calls(head, conf.repeats, sync))
                samples[name]["frame"].append(_time_calls(frame, conf.repeats, sync))

    def pooled(name: str, part: str) -> np.ndarray:
        return np.concatenate(samples[name][part]) * 1e3

    def per_round(name: str, part: str) -> list[float]:
        return [statistics.median(r) * 1e3 for r in samples[name][part]]

    head, frame = pooled("candidate", "head"), pooled("candidate", "frame")
    ratios = {}
    if reference is not None:
        for part in ("head", "frame"):
            ratios[part] = [c / r for c, r in zip(per_round("candidate", part), per_round("reference", part))]
    return Latency(
        head_ms=float(np.median(head)), head_p90_ms=float(np.percentile(head, 90)),
        frame_ms=float(np.median(frame)), frame_p90_ms=float(np.percentile(frame, 90)),
        head_share=float(np.median(head) / np.median(frame)),
        frame_spread=_spread(per_round("candidate", "frame")),
        head_ratio=statistics.median(ratios["head"]) if ratios else None,
        frame_ratio=statistics.median(ratios["frame"]) if ratios else None,
        frame_ratio_spread=_spread(ratios["frame"]) if ratios else None,
        runtime=conf.runtime, device=device_name(device), threads=conf.threads)


def reference_head() -> DictConfig:
    """STARK-Lightning's own head (the head schema's defaults): what every candidate's time is compared with."""
    from heads.spec import HeadSpec

    return OmegaConf.structured(HeadSpec)


def build_with_head(model: Any, head: Any) -> nn.Module:
    """The tracker a `model` config node builds, with `head` (a head config node) in place of its own."""
    from hydra.utils import instantiate

    node = OmegaConf.to_container(model, resolve=True, enum_to_str=True)
    node["head"] = OmegaConf.to_container(head, resolve=True, enum_to_str=True) if OmegaConf.is_config(head) \
        else dict(head)
    return instantiate(OmegaConf.create(node))


def latency_key(cfg: DictConfig, conf: LatencyConf) -> str:
    """Everything that decides a measurement: the model and head, the runtime and its settings, the machine,
    the library versions."""
    device = resolve_device(conf.device)
    identity = {"model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
                "head": OmegaConf.to_container(cfg.head, resolve=True, enum_to_str=True),
                "latency": {k: v for k, v in asdict(conf).items() if k != "device"},
                "device": device_name(device), "torch": torch.__version__}
    if conf.runtime == "onnxruntime":
        import onnxruntime

        identity["onnxruntime"] = onnxruntime.__version__
    return stable_hash(identity)


def candidate_latency(cfg: DictConfig, conf: Optional[LatencyConf] = None, cache: bool = True) -> Latency:
    """The latency of the model `cfg` (a job config with `model` and `head`) composes to, measured untrained on
    `conf` (default: `cfg.latency`), cached under <runs>/latency/<key>.json: a repeat costs a file read, and two
    processes asking at once measure it once."""
    if conf is None:
        conf = OmegaConf.to_object(cfg.latency) if OmegaConf.is_config(cfg.latency) else cfg.latency
    key = latency_key(cfg, conf)
    path = runs_root() / "latency" / f"{key}.json"

    def load() -> Optional[Latency]:
        try:
            return Latency(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    if cache and (found := load()) is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        if cache and (found := load()) is not None:
            return found
        torch.manual_seed(0)
        model = build_with_head(cfg.model, cfg.head)
        reference = build_with_head(cfg.model, reference_head()) if conf.reference else None
        started = time.perf_counter()
        latency = measure_latency(model, conf, reference)
        log.debug("latency measured in %.1f s: %s", time.perf_counter() - started, latency)
        if cache:
            atomic_write_text(path, json.dumps(asdict(latency), indent=2))
    return latency
