"""A researcher's first commands on STARK-Lightning's official checkpoint (a file in the official layout that the
test builds): evaluate it as it is, profile it, and train heads on its trunk at head and finetune fidelity."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial

import pytest
import torch

from heads import CornerHead
from tracker.model.checkpoint import official_names
from tracker.config import CONF_DIR
from tracker.evaluation import load_model
from tracker.model import StarkLightning

ROOT = CONF_DIR.parent
TINY_DATA = ["data.generate.train_sequences=4", "data.generate.val_sequences=2", "data.generate.frames=8",
             "data.generate.width=128", "data.generate.height=96"]
OFFICIAL_SIZES = ["trainer.template_size=128", "trainer.search_size=320", "trainer.frozen_bn=true"]


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """An official-layout file: STARK's trainer dict with the baseline model's state dict under `net`."""
    torch.manual_seed(3)
    model = StarkLightning(partial(CornerHead)).eval()
    path = tmp_path_factory.mktemp("official") / "STARK_Lightning_X_trt_ep0500.pth.tar"
    net = {theirs: model.state_dict()[ours] for ours, theirs in official_names(model).items()}
    torch.save({"epoch": 500, "net_type": "STARKLightningXtrt", "net": net}, path)
    return path, model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("workspace")


def _run(module: str, *args: str, workspace) -> dict:
    env = {**os.environ, "LIGHTTRACK_RUNS": str(workspace / "runs")}
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args = (*args, f"hydra.run.dir={workspace / 'hydra' / module}")
    out = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return {"json": json.loads(out.stdout.strip().splitlines()[-1]), "log": out.stdout + out.stderr}


def test_load_model_builds_the_baseline_for_the_official_file(official):
    path, source = official
    model, cfg = load_model(path)
    assert cfg.head.block == "repvgg" and (model.template_size, model.search_size) == (128, 320)
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_evaluate_tracks_with_the_official_model_as_it_is(official, workspace, tmp_path):
    path, _ = official
    out = _run("tracker.evaluate", f"checkpoint={path}", f"data.cache_dir={workspace / 'data'}", *TINY_DATA,
               f"output_dir={tmp_path / 'eval'}", "progress=false", "device=cpu", workspace=workspace)
    assert out["json"]["sequences"] == 2 and 0 <= out["json"]["auc"] <= 100
    assert "carries no config of ours" in out["log"] and "template 128 / search 320" in out["log"]


def test_profile_accepts_the_official_checkpoint(official, workspace):
    path, _ = official
    out = _run("tracker.profile", f"checkpoint={path}", "output=json", "latency=quick",
               "device=cpu", workspace=workspace)["json"]
    assert (out["head_params"], out["model_params_deploy"], out["head_macs"]) == (331_522, 2_151_202, 118_886_400)
    assert out["checkpoint"] == str(path) and out["frame_latency_ms"] > 0


@pytest.mark.parametrize("fidelity", ["head", "finetune"])
def test_train_a_head_on_the_official_trunk(official, workspace, tmp_path, fidelity):
    path, source = official
    run_dir = tmp_path / fidelity
    out = _run("tracker.train", "trainer=tiny", "latency=quick", "head=dsconv", f"trainer.fidelity={fidelity}", f"trainer.trunk={path}",
               *OFFICIAL_SIZES, "trainer.epochs=1", "trainer.pairs_per_epoch=4", "trainer.head_feature_pairs=4",
               f"data.cache_dir={workspace / 'data'}", *TINY_DATA, f"hydra.run.dir={run_dir}",
               workspace=workspace)["json"]
    assert out["fidelity"] == fidelity and out["head_params"] == 14_466 and "auc" in out
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    same = torch.equal(trained["encoder.linear1.weight"], source.state_dict()["encoder.linear1.weight"])
    assert same == (fidelity == "head")  # head fidelity keeps the official trunk; finetune trains it
