"""ONNX export (`tracker.export`): two graphs as STARK ships them, ONNX Runtime's boxes against PyTorch's, the
original model untouched, and the `python -m tracker.export` app end to end."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import partial

import numpy as np
import onnx
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from heads import CornerHead
from heads.cost import deploy_copy
from model_helpers import randomise_bn as _randomise_bn
from tracker.model.checkpoint import save_checkpoint
from tracker.config import ConfigError, compose
from tracker.export import (SEARCH_INPUTS, SEARCH_OUTPUTS, TEMPLATE_INPUTS, TEMPLATE_OUTPUTS, OnnxTracker,
                            _main, example_inputs, export_onnx)
from tracker.model import StarkLightning
from tracker.version import MODEL_VERSION

from conftest import ROOT

HEADS = {
    "repvgg": partial(CornerHead),
    "dsconv": partial(CornerHead, block="dsconv", num_blocks=2, channels=64, activation="relu6",
                      final_kernel_size=1, norm=False),
}


def _model(head: str) -> StarkLightning:
    model = StarkLightning(HEADS[head], template_size=64, search_size=128)
    _randomise_bn(model)
    return model


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_onnx_runtime_boxes_equal_pytorch(head, tmp_path):
    model = _model(head).train()
    before = _state(model)
    paths = export_onnx(model, tmp_path, opset=17, metadata={"head": head})

    # the original is not reparameterised, not switched to eval, not changed
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in model.modules())
    assert all(getattr(m, "fused", None) is None for m in model.modules())

    graphs = {name: onnx.load(str(paths[name])) for name in ("template", "search")}
    assert [i.name for i in graphs["template"].graph.input] == list(TEMPLATE_INPUTS)
    assert [o.name for o in graphs["template"].graph.output] == list(TEMPLATE_OUTPUTS)
    assert [i.name for i in graphs["search"].graph.input] == list(SEARCH_INPUTS)
    assert [o.name for o in graphs["search"].graph.output] == list(SEARCH_OUTPUTS)
    assert graphs["search"].opset_import[0].version == 17
    info = json.loads(paths["json"].read_text())
    assert (info["template_size"], info["search_size"], info["opset"]) == (64, 128, 17)
    assert info["model_version"] == MODEL_VERSION and info["head"] == head
    assert info["inputs"]["search"]["template_tokens"] == [1, 16, 128]

    deployed = deploy_copy(model)
    tracker = OnnxTracker(tmp_path, threads=1)
    assert (tracker.template_size, tracker.search_size) == (64, 128)
    for seed in (1, 2, 3):  # other inputs and paddings than the export's example
        x = example_inputs(deployed, seed)
        assert x["template_mask"].any() and x["search_mask"].any() and not x["search_mask"].all()
        with torch.no_grad():
            template = deployed.encode_template(x["template_image"], x["template_mask"])
            ref = deployed.track(x["search_image"], x["search_mask"], template)
        ort_template = tracker.encode_template(x["template_image"], x["template_mask"])
        assert ort_template["template_mask_tokens"].dtype == np.bool_
        assert np.array_equal(ort_template["template_mask_tokens"], template.mask.numpy())
        assert np.abs(ort_template["template_tokens"] - template.tokens.numpy()).max() < 1e-4
        out = tracker.track(x["search_image"], x["search_mask"], ort_template)
        assert out["boxes"].shape == (1, 4) and out["corners"].shape == (1, 4)
        assert (out["boxes"] - ref["boxes"]).abs().max() < 1e-4
        assert (out["corners"] - ref["corners"]).abs().max() < 1e-4
        # PyTorch's template memory is accepted too
        assert (tracker.track(x["search_image"], x["search_mask"], template)["boxes"] - ref["boxes"]).abs().max() < 1e-4


def test_onnx_tracker_names_a_missing_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="template.onnx does not exist: export first"):
        OnnxTracker(tmp_path)


def _checkpoint(tmp_path):
    cfg = compose("train", ["trainer=tiny", "head=dsconv"])
    model = instantiate(cfg.model)
    _randomise_bn(model)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return save_checkpoint(tmp_path / "last.pt", model=model.state_dict(), config=config)


def _export_cli(tmp_path, *args):
    return subprocess.run([sys.executable, "-m", "tracker.export", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_export_cli_end_to_end(tmp_path):
    ckpt, out_dir = _checkpoint(tmp_path), tmp_path / "onnx"
    done = _export_cli(tmp_path, f"checkpoint={ckpt}", "format=onnx", f"out={out_dir}", "device=cpu",
                       "check.repeats=3", "check.warmup=1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "max |boxes ORT - PyTorch|" in done.stdout and "search branch latency, PyTorch" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["max_abs_box_diff"] < 1e-4 and result["ort_search_ms"] > 0 and result["torch_search_ms"] > 0
    assert {p.name for p in out_dir.iterdir()} == {"template.onnx", "search.onnx", "export.json"}
    info = json.loads((out_dir / "export.json").read_text())
    assert (info["template_size"], info["search_size"]) == (32, 64)
    assert info["head"]["block"] == "dsconv" and info["check"]["max_abs_box_diff"] < 1e-4


@pytest.mark.parametrize("overrides, message", [
    (["format=tensorrt"], "format='tensorrt' is not allowed: one of ['onnx']"),
    (["checkpoint=null"], "checkpoint=PATH is required"),
    (["out=null"], "out=DIR is required"),
])
def test_export_app_rejects_bad_options_before_any_work(tmp_path, overrides, message):
    cfg = compose("export", [f"checkpoint={tmp_path / 'none.pt'}", f"out={tmp_path / 'o'}", *overrides])
    with pytest.raises(ConfigError, match=re.escape(message)):
        _main(cfg)
    assert not (tmp_path / "o").exists()
