"""ONNX export of the deployed tracker, as STARK ships it: the template branch and the search branch as two graphs.

`python -m tracker.export checkpoint=PATH format=onnx out=DIR` writes

- `DIR/template.onnx`: `template_image` (1, 3, Ht, Wt) float32, `template_mask` (1, Ht, Wt) bool (True where
  padding) -> `template_tokens`, `template_pos` (1, Lz, C) float32 and `template_mask_tokens` (1, Lz) bool: the
  fields of `tracker.model.TemplateMemory`, computed once per sequence;
- `DIR/search.onnx`: `search_image`, `search_mask` and the template graph's outputs under the same names ->
  `boxes` (1, 4) normalised (cx, cy, w, h), then `corners` (1, 4) normalised (x1, y1, x2, y2);
- `DIR/export.json`: sizes, opset, names, head spec, model version, library versions, and the CLI's check.

Both graphs come from the deploy form (RepVGG branches reparameterised, BN folded, eval mode) at batch 1 with
fixed shapes. The CLI then runs them with ONNX Runtime and the PyTorch deploy model on the same random input
and prints the largest box difference and both median latencies of the search branch; `OnnxTracker` stands in
for `StarkLightning` (`encode_template`, `track`) wherever a tracker runs.

The exporter is torch's TorchScript-based one (`dynamo=False`): on torch 2.14 it exports this model exactly
(boxes within 1e-7 of PyTorch) in about a second at any opset >= 14, with nothing beyond `onnx`. The dynamo
exporter gives the same boxes but needs `onnxscript`, takes about ten times longer, and at opset 17 emits a
`Split` the ONNX checker rejects (its opset-18 form survives the down-conversion).
"""
from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from heads.cost import deploy_copy

from .config import ConfigError
from .io import atomic_path, atomic_write_text
from .model import StarkLightning, TemplateMemory
from .latency import median_latency_ms
from .version import MODEL_VERSION

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
TEMPLATE_INPUTS = ("template_image", "template_mask")
TEMPLATE_OUTPUTS = ("template_tokens", "template_pos", "template_mask_tokens")  # TemplateMemory's fields, in order
SEARCH_INPUTS = ("search_image", "search_mask", *TEMPLATE_OUTPUTS)
SEARCH_OUTPUTS = ("boxes", "corners")
GRAPH_FILES = {"template": "template.onnx", "search": "search.onnx"}


class _TemplateGraph(nn.Module):
    def __init__(self, model: StarkLightning):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode_template(image, mask))


class _SearchGraph(nn.Module):
    def __init__(self, model: StarkLightning):
        super().__init__()
        self.model = model

    def forward(self, image, mask, tokens, pos, template_mask) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.track(image, mask, TemplateMemory(tokens, pos, template_mask))
        return out["boxes"], out["corners"]


def example_inputs(model: StarkLightning, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random normalised crops at the model's sizes with padded borders marked in their masks (CPU, batch 1)."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {}
    for branch, size in (("template", model.template_size), ("search", model.search_size)):
        image = torch.randn(1, 3, size, size, generator=gen)
        mask = torch.zeros(1, size, size, dtype=torch.bool)
        top, right = (torch.randint(0, size // 3, (2,), generator=gen)).tolist()
        mask[:, :top, :] = True
        mask[:, :, size - right:] = True
        image[mask[:, None].expand_as(image)] = 0.0
        inputs[f"{branch}_image"], inputs[f"{branch}_mask"] = image, mask
    return inputs


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: Sequence[str],
            output_names: Sequence[str], opset: int) -> None:
    """One graph with the TorchScript exporter, checked, written atomically."""
    import onnx

    kwargs: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # torch >= 2.9 flags the TorchScript exporter as legacy; it is the exact, offline one here (module doc)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), args, str(tmp), input_names=list(input_names),
                          output_names=list(output_names), opset_version=opset, do_constant_folding=True, **kwargs)
        onnx.checker.check_model(onnx.load(str(tmp)), full_check=True)


def export_onnx(model: StarkLightning, out_dir: str | Path, opset: int = 17,
                metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Exports the deploy form of `model` (a reparameterised eval copy; `model` itself is not touched) as
    `out_dir/template.onnx` and `out_dir/search.onnx`, checks both with the ONNX checker, and writes
    `out_dir/export.json` (plus `metadata`, e.g. the head spec). Returns {"template", "search", "json"} -> path."""
    import onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    deployed = deploy_copy(model).cpu()
    x = example_inputs(deployed)
    with torch.no_grad():
        template = deployed.encode_template(x["template_image"], x["template_mask"])
    paths = {name: out_dir / file for name, file in GRAPH_FILES.items()}
    _export(_TemplateGraph(deployed), (x["template_image"], x["template_mask"]), paths["template"],
            TEMPLATE_INPUTS, TEMPLATE_OUTPUTS, opset)
    _export(_SearchGraph(deployed), (x["search_image"], x["search_mask"], *template), paths["search"],
            SEARCH_INPUTS, SEARCH_OUTPUTS, opset)
    lz, dim = template.tokens.shape[1:]
    zs, xs = deployed.template_size, deployed.search_size
    info = {
        "format": "onnx", "opset": opset, "exporter": "torchscript", "batch": 1,
        "template_size": zs, "search_size": xs, "stride": deployed.stride,
        "files": dict(GRAPH_FILES),
        "inputs": {"template": {"template_image": [1, 3, zs, zs], "template_mask": [1, zs, zs]},
                   "search": {"search_image": [1, 3, xs, xs], "search_mask": [1, xs, xs],
                              "template_tokens": [1, lz, dim], "template_pos": [1, lz, dim],
                              "template_mask_tokens": [1, lz]}},
        "outputs": {"template": list(TEMPLATE_OUTPUTS), "search": list(SEARCH_OUTPUTS)},
        "boxes": "normalised (cx, cy, w, h); corners: normalised (x1, y1, x2, y2); multiply by search_size",
        "model_version": MODEL_VERSION,
        "params_deploy": sum(p.numel() for p in deployed.parameters()),
        "torch": torch.__version__, "onnx": onnx.__version__,
        **dict(metadata or {}),
    }
    paths["json"] = out_dir / "export.json"
    atomic_write_text(paths["json"], json.dumps(info, indent=2))
    return paths


def _providers(requested: Sequence[str] | None) -> list[str]:
    """The requested execution providers this onnxruntime build has, CPU always last as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    missing = [p for p in requested or () if p not in available]
    if missing:
        log.warning("ONNX Runtime providers %s are not available in this build (available: %s); using the rest",
                    missing, available)
    chosen = [p for p in requested or () if p in available and p != "CPUExecutionProvider"]
    return chosen + ["CPUExecutionProvider"]


def session_options(threads: int = 1) -> "onnxruntime.SessionOptions":
    """ONNX Runtime settings for batch-1 tracking: `threads` intra-op threads, sequential, every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle workers sleep instead of spinning (~0.2 s after each run): between frames the tracker's own Python
    # (cropping, mapping boxes back) needs those cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class OnnxTracker:
    """The exported graphs under ONNX Runtime, with `StarkLightning`'s tracking interface: `encode_template`
    returns the template outputs (name -> numpy array), `track` returns `boxes` and `corners` as (1, 4)
    torch tensors on the input image's device. `providers`: e.g. ["CUDAExecutionProvider"] (used when this
    onnxruntime build has it); CPU otherwise."""

    def __init__(self, out_dir: str | Path, threads: int = 1, providers: list[str] | None = None):
        import onnxruntime as ort

        out_dir = Path(out_dir)
        paths = {name: out_dir / file for name, file in GRAPH_FILES.items()}
        for name, path in paths.items():
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist: export first (python -m tracker.export "
                                        f"checkpoint=PATH format=onnx out={out_dir})")
        options = session_options(threads)
        self.providers = _providers(providers)
        self.sessions = {name: ort.InferenceSession(str(path), options, providers=self.providers)
                         for name, path in paths.items()}
        for name, expected in (("template", TEMPLATE_INPUTS), ("search", SEARCH_INPUTS)):
            found = tuple(i.name for i in self.sessions[name].get_inputs())
            if found != expected:
                raise ValueError(f"{paths[name]} has inputs {list(found)}; expected {list(expected)}")
        self.template_size = self.sessions["template"].get_inputs()[0].shape[-1]
        self.search_size = self.sessions["search"].get_inputs()[0].shape[-1]

    def encode_template(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
        feed = {"template_image": _numpy(image).astype(np.float32, copy=False),
                "template_mask": _numpy(mask).astype(bool, copy=False)}
        return dict(zip(TEMPLATE_OUTPUTS, self.sessions["template"].run(list(TEMPLATE_OUTPUTS), feed)))

    def track(self, image: torch.Tensor, mask: torch.Tensor,
              template: Mapping[str, Any] | TemplateMemory) -> dict[str, torch.Tensor]:
        """`template`: what `encode_template` returned (or a PyTorch `TemplateMemory`)."""
        if isinstance(template, TemplateMemory):
            template = dict(zip(TEMPLATE_OUTPUTS, template))
        feed = {"search_image": _numpy(image).astype(np.float32, copy=False),
                "search_mask": _numpy(mask).astype(bool, copy=False),
                **{name: _numpy(template[name]) for name in TEMPLATE_OUTPUTS}}
        boxes, corners = self.sessions["search"].run(list(SEARCH_OUTPUTS), feed)
        device = image.device if isinstance(image, torch.Tensor) else "cpu"
        return {"boxes": torch.from_numpy(boxes).to(device), "corners": torch.from_numpy(corners).to(device)}


def compare(model: StarkLightning, out_dir: str | Path, device: torch.device | str = "cpu", threads: int = 1,
            warmup: int = 3, repeats: int = 20, seed: int = 1) -> dict[str, Any]:
    """Runs both graphs with ONNX Runtime and the PyTorch deploy model on the same random input: the largest
    box difference and each one's median latency of the search branch (ms)."""
    device = torch.device(device)
    deployed = deploy_copy(model).to(device)
    onnx_tracker = OnnxTracker(out_dir, threads, ["CUDAExecutionProvider"] if device.type == "cuda" else None)
    x = {k: v.to(device) for k, v in example_inputs(deployed, seed).items()}
    with torch.no_grad():
        template = deployed.encode_template(x["template_image"], x["template_mask"])
        ref = deployed.track(x["search_image"], x["search_mask"], template)
    ort_template = onnx_tracker.encode_template(x["template_image"], x["template_mask"])
    out = onnx_tracker.track(x["search_image"], x["search_mask"], ort_template)
    diff = {k: (out[k].cpu() - ref[k].float().cpu()).abs().max().item() for k in SEARCH_OUTPUTS}
    cpu = torch.device("cpu")
    return {
        "max_abs_box_diff": diff["boxes"], "max_abs_corner_diff": diff["corners"],
        "ort_search_ms": median_latency_ms(lambda: onnx_tracker.track(x["search_image"], x["search_mask"],
                                                                      ort_template), cpu, warmup, repeats),
        "torch_search_ms": median_latency_ms(lambda: deployed.track(x["search_image"], x["search_mask"], template),
                                             device, warmup, repeats),
        "ort_providers": onnx_tracker.providers, "torch_device": str(device), "threads": threads,
    }


def check_options(cfg: DictConfig) -> None:
    """Fails before any work with a message naming the field, its value and what is allowed."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r} is not allowed: one of {list(FORMATS)}")
    if not cfg.checkpoint:
        raise ConfigError("checkpoint=PATH is required: a checkpoint written by tracker.train "
                          "(runs/train/<run>/checkpoints/last.pt) or STARK-Lightning's official file")
    if not cfg.out:
        raise ConfigError("out=DIR is required: the folder that receives template.onnx, search.onnx and export.json")
    for name, low in (("opset", 14), ("threads", 1), ("check.repeats", 1), ("check.warmup", 0)):
        value = OmegaConf.select(cfg, name)
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name}={value!r} is not allowed: an integer >= {low}")


def _main(cfg: DictConfig) -> None:
    from .evaluation import load_model
    from .latency import resolve_device

    check_options(cfg)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    model, model_cfg = load_model(cfg.checkpoint)
    head = OmegaConf.select(model_cfg, "head")
    metadata = {"checkpoint": str(cfg.checkpoint),
                "head": OmegaConf.to_container(head, resolve=True, enum_to_str=True) if head is not None else None}
    paths = export_onnx(model, cfg.out, cfg.opset, metadata)
    import onnxruntime as ort

    check = {**compare(model, cfg.out, device, cfg.threads, cfg.check.warmup, cfg.check.repeats),
             "onnxruntime": ort.__version__, "tolerance": cfg.check.tolerance}
    info = json.loads(paths["json"].read_text())
    atomic_write_text(paths["json"], json.dumps({**info, "check": check}, indent=2))
    print(f"template graph                 {paths['template']}")
    print(f"search graph                   {paths['search']}")
    print(f"max |boxes ORT - PyTorch|      {check['max_abs_box_diff']:.2e}")
    print(f"search branch latency, ORT     {check['ort_search_ms']:.3f} ms  ({', '.join(check['ort_providers'])}, "
          f"{cfg.threads} thread{'s' if cfg.threads > 1 else ''})")
    print(f"search branch latency, PyTorch {check['torch_search_ms']:.3f} ms  ({device})")
    print(json.dumps({"out": str(Path(cfg.out)), **{k: str(v) for k, v in paths.items()}, **check}))
    if not check["max_abs_box_diff"] <= cfg.check.tolerance:
        raise RuntimeError(f"ONNX Runtime's boxes differ from PyTorch's by {check['max_abs_box_diff']:.3g} > "
                           f"check.tolerance={cfg.check.tolerance}; the graphs in {cfg.out} are not trustworthy")


def main() -> None:
    from .app import hydra_app

    hydra_app(_main, "export")()


if __name__ == "__main__":
    main()
