"""INT8 post-training static quantisation (`tracker.quantize`) and the INT8 figures of an evaluation: the INT8
boxes stay near the FP32 ones, the AUC drop is measured on the same sequences, scope=head touches only the head,
bad values fail before any work, and the evaluate app prints the figures.

One evaluation is shared by the module: the evaluate app, in process, on STARK-Lightning trained at the CPU
preset's sizes (64/128: the shipped baseline trunk, real trained weights and BN statistics, whose boxes follow
its input) over a tiny synthetic benchmark."""
from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch

from tracker.cache import SHIPPED_TRUNKS
from tracker.config import CONF_DIR, ConfigError, compose
from tracker.evaluation import OnnxStarkTracker, run_tracker, scores_dir
from tracker.evaluation.results import read_per_sequence_table
from tracker.export import OnnxTracker, example_inputs
from tracker.quantize import HEAD_NODE, calibration_pairs, quantize_graphs, quantized_nodes

TINY_DATA = ["data.generate.train_sequences=4", "data.generate.val_sequences=2", "data.generate.frames=12",
             "data.generate.width=128", "data.generate.height=96", "data.generate.workers=1"]
CROPS = 16  # calibration pairs: enough for stable ranges at this size, cheap on 2 cores


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("quantize")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIGHTTRACK_RUNS", str(root / "runs"))
        yield root


def _trunk():
    return sorted(SHIPPED_TRUNKS.glob("*.pt"))[0]


def _evaluate_cfg(workspace, *overrides):
    return compose("evaluate", [f"checkpoint={_trunk()}", f"data.cache_dir={workspace / 'data'}", *TINY_DATA,
                                "device=cpu", "progress=false", "evaluation.static_baseline=false", *overrides])


@pytest.fixture(scope="module")
def evaluated(workspace):
    """`python -m tracker.evaluate checkpoint=TRUNK quantize=int8` in process: (out_dir, printed JSON)."""
    import contextlib
    import io

    import tracker.evaluate

    out = workspace / "eval"
    cfg = _evaluate_cfg(workspace, "quantize=int8", f"evaluation.calibration_crops={CROPS}", f"output_dir={out}")
    assert cfg.evaluation.quantize == "int8" and cfg.evaluation.quantize_scope == "model"  # the one owner
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        tracker.evaluate._main(cfg)
    return out, json.loads(printed.getvalue().strip().splitlines()[-1]), cfg


def test_the_evaluate_app_prints_the_int8_figures(evaluated):
    out, result, _ = evaluated
    for key in ("auc", "int8_auc", "int8_auc_drop", "int8_frame_latency_ms", "onnx_frame_latency_ms"):
        assert isinstance(result[key], float), key
    assert result["int8_scope"] == "model" and result["int8_calibration_crops"] == CROPS
    assert result["int8_frame_latency_ms"] > 0 and result["onnx_frame_latency_ms"] > 0
    assert json.loads((out / "metrics.json").read_text())["int8_auc"] == result["int8_auc"]
    record = json.loads((out / "int8" / "export.json").read_text())
    assert (record["template_size"], record["search_size"]) == (64, 128)  # the FP32 export's record, kept
    q = record["quantization"]
    assert (q["scope"], q["calibration_crops"], q["method"], q["activations"], q["weights"]) == \
        ("model", CROPS, "minmax", "QUInt8", "QInt8")
    assert q["onnxruntime"] and q["quantized_nodes"]["template"] > 0 and q["quantized_nodes"]["search"] > 0


def test_int8_auc_drop_is_measured_on_the_same_sequences(evaluated):
    out, result, _ = evaluated
    assert result["int8_auc_drop"] == result["auc"] - result["int8_auc"]
    table = read_per_sequence_table(scores_dir(out))  # the report's bootstrap reads the int8 rows beside the model's
    assert list(table.columns) == ["model", "int8"] and not table.isna().any().any() and len(table) == 2
    assert table["model"].mean() == pytest.approx(result["auc"], abs=1e-3)  # the CSV's 4 decimals
    assert table["int8"].mean() == pytest.approx(result["int8_auc"], abs=1e-3)
    names = {p.name for p in (out / "results" / "model").glob("*.txt")}
    assert names == {p.name for p in (out / "results" / "int8").glob("*.txt")} and len(names) == 2


def test_int8_boxes_stay_close_to_fp32(evaluated, workspace):
    """Boxes are normalised (the search crop is 1: 128 px here; one feature cell, 16 px, is 0.125). INT8 moves a
    box through the rounding of ~20 layers' activations (one step: 1/255 of each calibrated range) and the
    soft-argmax over the score maps. Measured on this CPU with the shipped GPU-trained trunk: 0.018 on the fixed
    input (random noise, outside the calibrated ranges, so clipped), on 16 training crops other than the
    calibration's a mean of 0.0092 and a largest of 0.045 (the earlier, shorter-trained trunk: 0.015, 0.0034,
    0.014: the longer-trained one quantises less tightly). Bound: 0.08 (10 px, under a cell) per box, 0.02 on
    average: about 2x room for another CPU's integer kernels, and a broken quantisation (wrong ranges, a wrong
    scale) moves boxes by tenths. The FP32 boxes vary across these crops by a standard deviation over 0.05
    (0.079 the least, of one coordinate), so the model is not a near-constant the INT8 graphs could match by
    chance."""
    out, _, cfg = evaluated
    fp32, int8 = OnnxTracker(out / "onnx"), OnnxTracker(out / "int8")

    def boxes(graphs, template, template_mask, search, search_mask):
        return graphs.track(search, search_mask, graphs.encode_template(template, template_mask))["boxes"]

    x = example_inputs(fp32, seed=0)  # the fixed input
    fixed = [x["template_image"], x["template_mask"], x["search_image"], x["search_mask"]]
    diff = (boxes(int8, *fixed) - boxes(fp32, *fixed)).abs().max().item()
    pairs = [[p["template"], p["template_mask"], p["search"], p["search_mask"]]
             for p in calibration_pairs(cfg.data, 64, 128, 16, seed=1234)]  # other crops than the calibration's
    a = torch.cat([boxes(fp32, *p) for p in pairs])
    b = torch.cat([boxes(int8, *p) for p in pairs])
    print(f"INT8 - FP32 boxes: fixed input {diff:.4f}, training crops mean {(a - b).abs().mean():.4f} "
          f"max {(a - b).abs().max():.4f}; FP32 spread {a.std(0).min():.3f}")
    assert diff < 0.08
    assert (a - b).abs().max() < 0.08 and (a - b).abs().mean() < 0.02
    assert a.std(0).min() > 0.03


def test_onnx_tracking_does_not_depend_on_lockstep_batching(evaluated):
    """Batch-1 graphs: lockstep groups fall back to one sequence at a time, the same boxes as the online tracker."""
    from tracker.data import build_reader

    out, _, cfg = evaluated
    reader = build_reader(cfg.data)
    sequences = [reader.sequence(n) for n in reader.sequence_names()]
    tracker = OnnxStarkTracker(OnnxTracker(out / "int8"), name="int8")
    alone = run_tracker(tracker, sequences, out / "alone", progress=False, batch=1)["predictions"]
    grouped = run_tracker(tracker, sequences, out / "grouped", progress=False, batch=2)["predictions"]
    assert alone.keys() == grouped.keys() and all(np.array_equal(alone[k], grouped[k]) for k in alone)
    written = np.loadtxt(out / "results" / "int8" / f"{sequences[0].name}.txt", delimiter=",")
    assert np.allclose(written, alone[sequences[0].name], atol=1e-4)  # what the evaluation wrote


def test_scope_head_quantises_only_the_heads_nodes(evaluated, workspace):
    out, _, cfg = evaluated
    result = quantize_graphs(out / "onnx", workspace / "head", lambda: calibration_pairs(cfg.data, 64, 128, 4),
                             scope="head", calibration_crops=4)
    assert result.scope == "head" and result.quantized_nodes["template"] == 0
    template = onnx.load(str(workspace / "head" / "template.onnx"))
    assert not [n for n in template.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    search = onnx.load(str(workspace / "head" / "search.onnx"))
    inside = quantized_nodes(search)
    assert inside and all(HEAD_NODE.match(n) for n in inside), inside
    assert any(n.endswith("/Conv") for n in inside)
    # every Q/DQ node sits between head nodes: what consumes a DequantizeLinear output is a head node or a Q/DQ
    qdq = {n.name: n for n in search.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    outputs = {o for n in qdq.values() for o in n.output}
    around = [n.name for n in search.graph.node if n.name not in qdq and set(n.input) & outputs
              and not HEAD_NODE.match(n.name)]
    assert len(qdq) > 0 and around == []
    assert json.loads((workspace / "head" / "export.json").read_text())["quantization"]["scope"] == "head"
    x = example_inputs(OnnxTracker(out / "onnx"))
    fp32, head = (g.track(x["search_image"], x["search_mask"],
                          g.encode_template(x["template_image"], x["template_mask"]))["boxes"]
                  for g in (OnnxTracker(out / "onnx"), result.tracker()))
    assert (head - fp32).abs().max() < 0.08  # it runs, near the FP32 boxes (tolerance: the test above)


@pytest.mark.parametrize("override, message", [
    ("evaluation.quantize=int4", "evaluation.quantize='int4' is not allowed: one of ['none', 'int8']"),
    ("evaluation.quantize_scope=trunk", "evaluation.quantize_scope='trunk' is not allowed: one of ['model', 'head']"),
    ("evaluation.calibration_crops=0", "evaluation.calibration_crops=0 is not allowed: an integer >= 1"),
])
def test_a_bad_int8_setting_fails_when_the_config_is_composed(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose("train", [override])


def test_int8_on_data_without_a_train_split_fails_before_tracking(workspace):
    from tracker.evaluation import evaluate_model

    cfg = _evaluate_cfg(workspace, "quantize=int8", "data.generate.train_sequences=0")
    with pytest.raises(ConfigError, match=r"evaluation.quantize=int8 calibrates on the train split of data=synthetic, "
                                          r"which has no sequences"):
        evaluate_model(None, cfg, workspace / "none", device=None, progress=False)  # no model needed to fail
    assert not (workspace / "none").exists()


@pytest.mark.parametrize("override, message", [
    ("quantize=int4", "quantize='int4' is not allowed: one of ['none', 'int8']"),
    ("quantize_scope=trunk", "quantize_scope='trunk' is not allowed: one of ['model', 'head']"),
])
def test_the_evaluate_app_names_its_own_key(tmp_path, override, message):
    """The app's `quantize` is what the user typed: the error names it, not the evaluation node it feeds."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import tracker.evaluate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # composed as the app composes
        cfg = hydra_compose("evaluate", [f"checkpoint={tmp_path / 'none.pt'}", override])
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        tracker.evaluate._main(cfg)


def test_int8_settings_leave_stored_recipes_and_runs_equal():
    """A study or run stored before these settings existed compares equal while no INT8 model is scored."""
    from omegaconf import OmegaConf

    from tracker.config import config_differences, without_settings_of_no_effect

    today = without_settings_of_no_effect(OmegaConf.to_container(compose("train", []), resolve=True))
    old = json.loads(json.dumps(today))
    for key in ("quantize", "quantize_scope", "calibration_crops", "onnx_threads"):
        old["evaluation"].pop(key, None)
    assert config_differences(old, today) == []
    int8 = without_settings_of_no_effect(OmegaConf.to_container(compose("train", ["evaluation.quantize=int8"]),
                                                                 resolve=True))
    assert ("evaluation.quantize", None, "int8") in config_differences(old, int8)
