"""INT8 post-training static quantisation of the exported tracker, with ONNX Runtime's own tools.

`quantize_model(model, data, out_dir)` exports the deploy form (`tracker.export`, FP32), calibrates activation
ranges on training crops and writes `out_dir/template.onnx` and `out_dir/search.onnx` in QDQ form
(QuantizeLinear / DequantizeLinear pairs around each quantised node, which ONNX Runtime fuses into integer
kernels) and `out_dir/export.json` (the FP32 export's record plus `quantization`: how the graphs were made), so
`tracker.export.OnnxTracker(out_dir)` runs them as it runs an FP32 export.

Choices, and why:

- ONNX Runtime's `quantize_static`, not torch.ao.quantization (deprecated): the graphs quantised are the ones a
  deployment ships, and the integer kernels that run them are the ones timed.
- QDQ format, per-channel symmetric INT8 weights, asymmetric UINT8 activations (U8S8): on this x86 CPU
  (AVX-512 VNNI) ONNX Runtime's U8S8 kernels ran the search branch 1.5-1.8x faster than S8S8 with the same
  boxes. On x86 without VNNI the U8S8 kernels can saturate (ONNX Runtime's docs: then reduce_range or S8S8).
- Quantised: the compute nodes (`OP_TYPES`: convolutions and matrix products, where integer kernels pay).
  FP32: the attention mask (`Where` with -inf), softmax, layer norm, the corner decoding (soft-argmax, box
  arithmetic: an 8-bit box costs up to half a step of its range for no speed) and the head's predictor
  (`FP32_NODES`): its output is the score maps' logits, and quantising them to 8 bits moved the shipped trunk's
  boxes twice as far (max 0.046 against 0.024 of the crop over 30 training crops) for no measurable speed (a
  conv with 2 output channels). The predictor's input, the last block's activation, stays quantised.
- MinMax calibration: its calibration graph reduces every tensor to its min and max per crop, so a few hundred
  crops cost little memory; the histogram methods (entropy, percentile; `method=`) keep every intermediate
  tensor of every crop until the end, gigabytes at 320 x 320, and gave the same boxes within 1e-3 on a tiny
  model. ONNX Runtime 1.32's `CalibMaxIntermediateOutputs` drops the crops of every full chunk instead of
  merging them, so it is not set; its pre-processing (`quant_pre_process`) fails on these graphs (symbolic shape
  inference on a Reshape) and is not needed: every shape is static.
- Calibration data: training pairs from the data config's TRAIN split through training's own pair pipeline
  (`tracker.data.build_pair_dataset`: sampling, jittered crops, augmentation, normalisation), seeded, so the
  same config calibrates the same way; the search graph's template inputs are the FP32 template graph's outputs
  for each pair's template crop.
- Scope `model`: both graphs. Scope `head`: only the search graph's head nodes (named `/head/...` by the
  TorchScript exporter, `head_nodes`); the template graph stays FP32. What quantising the head alone costs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

from .config import QUANTIZE_SCOPES, ConfigError, not_allowed
from .export import GRAPH_FILES, TEMPLATE_OUTPUTS, OnnxTracker, export_onnx
from .io import atomic_path, atomic_write_text
from .model import StarkLightning

RECORD = "export.json"  # the FP32 export's record with `quantization` added: how OnnxTracker's folders are read
OP_TYPES = ("Conv", "MatMul", "Gemm")  # what is quantised (module doc)
METHODS = ("minmax", "percentile", "entropy")  # MinMax by default (module doc); the others for comparison
CALIBRATION_SEED = 0
# a node of the prediction head, as the TorchScript exporter names it: its module path (`/head/blocks/...`; a
# `/model/` prefix where an exporter keeps the wrapper's attribute)
HEAD_NODE = re.compile(r"^/(?:model/)?head/")
FP32_NODES = re.compile(r"^/(?:model/)?head/predictor/")  # the score maps' logits stay FP32 (module doc)
_QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class QuantizedTracker:
    """INT8 graphs on disk and how they were made (`record()` is what `export.json` holds under `quantization`)."""

    out_dir: Path
    scope: str  # model | head
    calibration_crops: int
    calibration_seed: int
    method: str  # minmax | percentile | entropy
    activations: str  # QUInt8, per tensor
    weights: str  # QInt8, per channel
    op_types: tuple[str, ...]
    quantized_nodes: dict[str, int]  # graph -> its quantised nodes of `op_types`
    onnxruntime: str
    seconds: float  # calibration and quantisation
    paths: dict[str, Path] = field(default_factory=dict)  # template, search, json

    def tracker(self, threads: int = 1) -> OnnxTracker:
        """The INT8 graphs under ONNX Runtime's CPU provider."""
        return OnnxTracker(self.out_dir, threads)

    def record(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if k not in ("out_dir", "paths")}


def head_nodes(graph: Any) -> list[str]:
    """Names of an ONNX model's (or graph's) nodes that belong to the prediction head."""
    nodes = graph.graph.node if hasattr(graph, "graph") else graph.node
    return [n.name for n in nodes if HEAD_NODE.match(n.name)]


def quantized_nodes(graph: Any, op_types: tuple[str, ...] | None = None) -> list[str]:
    """Nodes that compute on dequantised INT8 values (consume a DequantizeLinear output), Q/DQ excluded; only
    those of `op_types` when given."""
    nodes = graph.graph.node if hasattr(graph, "graph") else graph.node
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in nodes if n.op_type not in _QDQ and (op_types is None or n.op_type in op_types)
            and any(i in dequantized for i in n.input)]


def check_calibration_data(data: Any) -> None:
    """Fails, named, when `data`'s train split (what calibrates) has no sequence: before any tracking."""
    from .data.config import build_sources, to_data_conf

    if not any(len(reader) for reader, _ in build_sources(data)):
        name = to_data_conf(data).name
        raise ConfigError(f"evaluation.quantize=int8 calibrates on the train split of data={name}, which has no "
                          f"sequences: calibrate on data that has some (evaluation.quantize=none skips the INT8 model)")


def calibration_pairs(data: Any, template_size: int, search_size: int, count: int,
                      seed: int = CALIBRATION_SEED) -> Iterator[dict[str, torch.Tensor]]:
    """`count` processed training pairs (template, template_mask, search, search_mask; batch 1) from `data`'s
    TRAIN split (its `sources`, else `train_split`), drawn as training draws them, at the model's sizes. Lazy and
    deterministic: pair i is the same on every call (one call per calibrated graph: `quantize_model` checks the
    data once, before them)."""
    from .data.config import build_pair_dataset, to_data_conf, with_crops

    conf = with_crops(to_data_conf(data), template_size, search_size)
    dataset = build_pair_dataset(conf, pairs_per_epoch=count, seed=seed)
    for index in range(count):
        pair = dataset[index]
        yield {k: pair[k][None] for k in ("template", "template_mask", "search", "search_mask")}


def _reader(feeds: Callable[[], Iterator[dict[str, np.ndarray]]]) -> Any:
    """ONNX Runtime's CalibrationDataReader over a generator factory: each pass (after `rewind`) starts over."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.iterator: Iterator[dict[str, np.ndarray]] | None = None

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.iterator is None:
                self.iterator = feeds()
            return next(self.iterator, None)

        def rewind(self) -> None:
            self.iterator = None

    return Reader()


class _NoPreprocessingHint(logging.Filter):
    """quantize_static logs a hint to run its pre-processing on the root logger; it does not apply (module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_hint() -> Iterator[None]:
    hint = _NoPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(hint)


def quantize_graphs(fp32_dir: str | Path, out_dir: str | Path, pairs: Callable[[], Iterator[Mapping[str, Any]]],
                    scope: str = "model", method: str = "minmax", calibration_crops: int = 0,
                    calibration_seed: int = CALIBRATION_SEED) -> QuantizedTracker:
    """Quantises the FP32 export in `fp32_dir` into `out_dir` (module doc), each graph written atomically, the
    record last. `pairs()` yields the calibration pairs anew on each call (`calibration_pairs`);
    `calibration_crops` and `calibration_seed` are how it was made (for the record)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if scope not in QUANTIZE_SCOPES:
        raise not_allowed("evaluation.quantize_scope", repr(scope), f"one of {list(QUANTIZE_SCOPES)}")
    if method not in METHODS:
        raise not_allowed("method", repr(method), f"one of {list(METHODS)}")
    started = time.perf_counter()
    fp32_dir, out_dir = Path(fp32_dir), Path(out_dir)
    fp32 = OnnxTracker(fp32_dir)  # fails, named, when the export is not there; computes the template inputs
    (out_dir / RECORD).unlink(missing_ok=True)  # a folder being (re)quantised has no record until it is complete

    def search_feeds() -> Iterator[dict[str, np.ndarray]]:
        for pair in pairs():
            template = fp32.encode_template(pair["template"], pair["template_mask"])
            yield {"search_image": pair["search"].numpy().astype(np.float32, copy=False),
                   "search_mask": pair["search_mask"].numpy().astype(bool, copy=False),
                   **{name: template[name] for name in TEMPLATE_OUTPUTS}}

    def template_feeds() -> Iterator[dict[str, np.ndarray]]:
        for pair in pairs():
            yield {"template_image": pair["template"].numpy().astype(np.float32, copy=False),
                   "template_mask": pair["template_mask"].numpy().astype(bool, copy=False)}

    feeds = {"template": template_feeds, "search": search_feeds}
    calibrate = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                 "entropy": CalibrationMethod.Entropy}[method]
    counts, paths = {}, {}
    for graph, file in GRAPH_FILES.items():
        source, paths[graph] = fp32_dir / file, out_dir / file
        graph_model = onnx.load(str(source))
        names = [n.name for n in graph_model.graph.node]
        chosen = head_nodes(graph_model) if scope == "head" else None
        if chosen == []:  # scope=head: the template graph has no head node, so it stays FP32, as exported
            with atomic_path(paths[graph]) as tmp:
                shutil.copyfile(source, tmp)
            counts[graph] = 0
            continue
        with atomic_path(paths[graph]) as tmp, _quiet_hint():
            quantize_static(
                str(source), str(tmp), _reader(feeds[graph]), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(OP_TYPES), nodes_to_quantize=chosen,
                nodes_to_exclude=[n for n in names if FP32_NODES.match(n)], per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=calibrate,
                calibration_providers=["CPUExecutionProvider"],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
            quantized = onnx.load(str(tmp))
            onnx.checker.check_model(quantized)
            counts[graph] = len(quantized_nodes(quantized, OP_TYPES))
    result = QuantizedTracker(
        out_dir=out_dir, scope=scope, calibration_crops=calibration_crops, calibration_seed=calibration_seed,
        method=method, activations="QUInt8", weights="QInt8", op_types=OP_TYPES, quantized_nodes=counts,
        onnxruntime=ort.__version__, seconds=round(time.perf_counter() - started, 3), paths=paths)
    info = json.loads((fp32_dir / RECORD).read_text()) if (fp32_dir / RECORD).is_file() else {}
    info.pop("check", None)  # the FP32 graphs' check against PyTorch, not these graphs'
    paths["json"] = out_dir / RECORD
    atomic_write_text(paths["json"], json.dumps({**info, "quantization": result.record()}, indent=2))
    return result


def quantize_model(model: StarkLightning, data: Any, out_dir: str | Path, scope: str = "model",
                   calibration_crops: int = 256, method: str = "minmax", seed: int = CALIBRATION_SEED,
                   fp32_dir: str | Path | None = None) -> QuantizedTracker:
    """`model`'s deploy form as INT8 graphs in `out_dir` (module doc), calibrated on `calibration_crops` pairs of
    `data`'s train split (`data`: a data node). `fp32_dir`: where the FP32 export is written and kept (default: a
    temporary folder). `model` itself is not changed."""
    if isinstance(calibration_crops, bool) or not isinstance(calibration_crops, int) or calibration_crops < 1:
        raise not_allowed("evaluation.calibration_crops", repr(calibration_crops), "an integer >= 1")
    if scope not in QUANTIZE_SCOPES:  # before the export: a bad value costs nothing
        raise not_allowed("evaluation.quantize_scope", repr(scope), f"one of {list(QUANTIZE_SCOPES)}")
    sizes = (model.template_size, model.search_size)
    check_calibration_data(data)  # before the export
    with tempfile.TemporaryDirectory(prefix="fp32-") as scratch:
        fp32 = Path(fp32_dir) if fp32_dir is not None else Path(scratch)
        export_onnx(model, fp32)
        return quantize_graphs(fp32, out_dir, lambda: calibration_pairs(data, *sizes, calibration_crops, seed),
                               scope, method, calibration_crops, seed)


__all__ = ["FP32_NODES", "HEAD_NODE", "METHODS", "OP_TYPES", "QuantizedTracker", "calibration_pairs",
           "check_calibration_data", "head_nodes", "quantize_graphs", "quantize_model", "quantized_nodes"]
