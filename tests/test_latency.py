"""Measured latency (tracker.latency): positive and finite on every runtime, interleaved with the reference,
cached by what decides it, refused when misconfigured."""
from __future__ import annotations

import math

import pytest
import torch

from tracker import latency as latency_mod
from tracker.config import LatencyConf, compose
from tracker.latency import build_with_head, candidate_latency, latency_key, measure_latency, reference_head

QUICK = dict(warmup=1, repeats=3, rounds=2, device="cpu")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTTRACK_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _cfg(*overrides: str):
    return compose("train", ["trainer=tiny", "head=dsconv", *overrides])


@pytest.mark.parametrize("runtime", ["torch", "deployed", "onnxruntime"])
def test_every_runtime_gives_positive_finite_figures_and_a_ratio(runtime, runs):
    cfg = _cfg()
    model, reference = build_with_head(cfg.model, cfg.head), build_with_head(cfg.model, reference_head())
    figures = measure_latency(model, LatencyConf(runtime=runtime, **QUICK), reference).figures()
    for name in ("head_latency_ms", "head_latency_p90_ms", "frame_latency_ms", "frame_latency_p90_ms",
                 "head_latency_ratio", "frame_latency_ratio", "frame_latency_spread"):
        assert math.isfinite(figures[name]) and figures[name] >= 0, name
    assert 0 < figures["head_latency_ms"] < figures["frame_latency_ms"]  # the head is part of the frame
    assert figures["head_latency_ms"] <= figures["head_latency_p90_ms"]
    assert 0 < figures["head_latency_share"] < 1
    assert figures["latency_runtime"] == runtime and figures["latency_threads"] == 1
    assert torch.get_num_threads() >= 1  # the thread count is restored


def test_a_candidate_is_measured_once_then_read_from_the_cache(runs, monkeypatch):
    cfg = _cfg("latency=quick")
    first = candidate_latency(cfg)
    assert len(list((runs / "latency").glob("*.json"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(latency_mod, "measure_latency", fail)
    assert candidate_latency(cfg) == first
    # another runtime, thread count or head is another measurement
    with pytest.raises(AssertionError, match="measured again"):
        candidate_latency(_cfg("latency=quick", "latency.threads=2"))
    with pytest.raises(AssertionError, match="measured again"):
        candidate_latency(_cfg("latency=quick", "head.channels=32"))


def test_the_key_ignores_nothing_that_decides_the_figure():
    base = _cfg()
    conf = LatencyConf(**QUICK)
    keys = {latency_key(base, conf), latency_key(base, LatencyConf(**{**QUICK, "runtime": "onnxruntime"})),
            latency_key(_cfg("head.kernel_size=5"), conf), latency_key(_cfg("trainer.search_size=128"), conf)}
    assert len(keys) == 4
    assert latency_key(_cfg("trainer.lr=0.5"), conf) == latency_key(base, conf)  # training does not decide it


@pytest.mark.parametrize("override,message", [
    ("latency.runtime=tensorrt", r"latency.runtime=tensorrt is not allowed: one of \['torch', 'deployed', "),
    ("latency.threads=0", r"latency.threads=0 is not allowed: an integer >= 1"),
    ("latency.device=tpu", r"latency.device=tpu is not allowed: auto, cpu, cuda or cuda:N"),
])
def test_bad_latency_settings_fail_at_compose_time(override, message):
    with pytest.raises(Exception, match=message):
        _cfg(override)


def test_latency_settings_are_no_part_of_a_runs_identity():
    from tracker.config import without_settings_of_no_effect
    from omegaconf import OmegaConf

    def identity(*overrides):
        return without_settings_of_no_effect(OmegaConf.to_container(_cfg(*overrides), resolve=True))

    assert identity("latency.runtime=onnxruntime", "latency.rounds=9") == identity()
