"""Data-parallel training under torchrun (tracker.distributed): two CPU processes (gloo) at batch B/2 train what one
process trains at batch B, resume from a checkpoint, and only rank 0 writes the run directory; each rank's share
of an epoch's pairs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from tracker.config import CONF_DIR, ConfigError, compose
from tracker.data import EpochSampler
from tracker.model.checkpoint import load_checkpoint
from tracker.train import Trial

ROOT = CONF_DIR.parent
TINY_DATA = ["data.generate.train_sequences=4", "data.generate.val_sequences=2", "data.generate.frames=12",
             "data.generate.width=128", "data.generate.height=96"]
# dropout off: each rank draws its own dropout masks (tracker.train seeds rank r's stream with seed + r), which
# cannot be those the single process draws for the same pairs, so with dropout the two runs are equally valid
# draws of the same training, not the same numbers. Everything else is exact: pairs (seeded by index), BatchNorm
# (synchronised over the global batch), gradients (DDP's mean of two half-batch means is the batch mean).
# logger=tensorboard: its writer must be rank 0's alone too. Rank 0's evaluation: one sequence, no static baseline.
OVERRIDES = ["trainer=tiny", "latency=quick", "model.dropout=0.0", "logger=tensorboard", "evaluation.max_sequences=1",
             "evaluation.static_baseline=false", *TINY_DATA]

# Audits every file write of each torchrun worker into <dir>/rank<RANK>.log (Python's audit hooks see every
# open(), os.open(), rename and removal; os.write below raises no event).
AUDIT = textwrap.dedent('''
    import os, sys
    if "RANK" in os.environ and "LIGHTTRACK_AUDIT" in os.environ:
        _fd = os.open(os.path.join(os.environ["LIGHTTRACK_AUDIT"], f"rank{os.environ['RANK']}.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        _writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

        def _hook(event, args):
            path = None
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1], args[2]
                if (mode and any(c in mode for c in "wax+")) or (not mode and flags & _writing):
                    path = args[0]
            elif event == "os.rename":
                path = args[1]
            elif event in ("os.remove", "os.rmdir"):
                path = args[0]
            if path is not None:
                os.write(_fd, (os.path.realpath(os.fsdecode(path)) + "\\n").encode())

        sys.addaudithook(_hook)
''')


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(autouse=True)
def _runs_root(workspace, monkeypatch):
    monkeypatch.setenv("LIGHTTRACK_RUNS", str(workspace / "runs"))


def _overrides(workspace, *extra):
    return [*OVERRIDES, f"data.cache_dir={workspace / 'data'}", *extra]


@pytest.fixture(scope="module")
def single(workspace):
    """One process, global batch B = trainer.batch_size = 4, 2 epochs: its final weights and history, and a copy
    of its epoch-1 checkpoint (taken when epoch 2's callback runs, before epoch 2's checkpoint replaces it)."""
    run, resume = workspace / "single", workspace / "resume"

    def keep_epoch_one(epoch, stats):
        if epoch == 2:
            (resume / "checkpoints").mkdir(parents=True)
            shutil.copy(run / "checkpoints" / "last.pt", resume / "checkpoints" / "last.pt")
            shutil.copy(run / "epochs.log", resume / "epochs.log")

    with pytest.MonkeyPatch.context() as patch:  # the function-scoped _runs_root is not set up yet
        patch.setenv("LIGHTTRACK_RUNS", str(workspace / "runs"))
        cfg = compose("train", _overrides(workspace))
        model = Trial(cfg, run, on_epoch_end=keep_epoch_one, progress=False).train()
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "history": pd.read_csv(run / "metrics.csv"), "resume": resume, "batch": cfg.trainer.batch_size}


def _torchrun(workspace, run_dir, tmp_path):
    """`torchrun --standalone --nproc_per_node=2 -m tracker.train ...` (gloo on CPU: trainer=tiny's device),
    each worker's writes audited; returns the audited paths by rank."""
    audit = tmp_path / "audit"
    audit.mkdir()
    (audit / "sitecustomize.py").write_text(AUDIT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(audit), os.environ.get("PYTHONPATH", "")]),
           "LIGHTTRACK_AUDIT": str(audit), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "tracker.train",
         *_overrides(workspace), f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])  # rank 0's JSON line, last
    assert result["run_dir"] == str(run_dir.resolve()) and "auc" in result
    assert "[rank 1]" in out.stderr  # rank 1 logs to stderr, prefixed
    return {rank: (audit / f"rank{rank}.log").read_text().split() for rank in (0, 1)}


def _assert_same_weights(expected, checkpoint):
    # Tolerance: float rounding only. DDP sums two half-batch gradients where one process sums one batch, and
    # BatchNorm's statistics are summed per rank, then over ranks, in another order: the same numbers up to ~1e-7
    # relative per step, which AdamW can amplify where a gradient is itself rounding noise (head.predictor.bias:
    # a uniform shift of the corner logits changes no soft-argmax, so its true gradient is 0). Measured after 2
    # epochs (4 steps, lr 1e-3): max |difference| 3.7e-5 (head.predictor.bias); the same single process run with
    # 1 thread instead of 2 differs from itself by 3.2e-5 at the same place. Without SyncBatchNorm (per-rank
    # statistics over 2 pairs) the difference was 0.51 (backbone running_var) and BN biases 150% off.
    # 2e-4: 5x the measured rounding, 2500x below what unsynchronised BatchNorm gives.
    state = load_checkpoint(checkpoint)["model"]
    assert state.keys() == expected.keys()
    worst = max(((name, (state[name].double() - value.double()).abs().max().item())
                 for name, value in expected.items() if value.is_floating_point()), key=lambda x: x[1])
    assert worst[1] <= 2e-4, worst
    assert all(torch.equal(state[k], v) for k, v in expected.items() if not v.is_floating_point())  # BN counts


def _assert_rank0_wrote(writes, run_dir, *expected):
    inside = lambda paths: [p for p in paths if p.startswith(str(run_dir.resolve()))]  # noqa: E731
    assert inside(writes[1]) == [], inside(writes[1])[:10]  # rank 1 wrote nothing in the run directory
    for name in expected:
        assert any(p.startswith(str(run_dir.resolve() / name)) for p in writes[0]), (name, inside(writes[0]))


def test_two_processes_at_half_the_batch_train_what_one_process_trains(workspace, single, tmp_path):
    run = tmp_path / "ddp"
    writes = _torchrun(workspace, run, tmp_path)
    _assert_same_weights(single["state"], run / "checkpoints" / "last.pt")
    history = pd.read_csv(run / "metrics.csv")  # the global figures (summed over the ranks), rank 0's file
    assert len(history) == 2
    for column in ("loss", "giou", "l1", "iou", "lr"):
        assert history[column].tolist() == pytest.approx(single["history"][column].tolist(), rel=1e-5, abs=1e-6)
    assert len((run / "epochs.log").read_text().splitlines()) == 2  # one line per epoch: one writer
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    _assert_rank0_wrote(writes, run, "checkpoints/", "metrics.csv", "epochs.log", "tensorboard/", "metrics.json",
                        "results/")


def test_two_processes_resume_a_checkpoint(workspace, single, tmp_path):
    """Epoch 2 under torchrun from the single process's epoch-1 checkpoint: the same weights as one process's
    two epochs (every rank loads rank 0's checkpoint: model, optimiser, schedule, history)."""
    run = single["resume"]
    writes = _torchrun(workspace, run, tmp_path)
    _assert_same_weights(single["state"], run / "checkpoints" / "last.pt")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    assert (run / "epochs.log").read_text().splitlines()[1].startswith("epoch 2/2")
    _assert_rank0_wrote(writes, run, "checkpoints/", "metrics.csv", "epochs.log")


def test_ranks_draw_disjoint_shares_whose_union_is_the_single_process_epoch():
    n, batch = 22, 8  # 2 full global batches; the last 6 pairs are dropped, as one process's loader drops them
    single = list(EpochSampler(n, epoch=3))[: (n // batch) * batch]
    for world in (2, 4):
        ranks = [list(EpochSampler(n, 3, rank, world, batch)) for rank in range(world)]
        assert all(len(r) == len(EpochSampler(n, 3, 0, world, batch)) == 8 // world * 2 for r in ranks)
        share = batch // world
        for k in range(n // batch):  # global batch k: the ranks' k-th batches, in rank order
            assert sum((r[k * share:(k + 1) * share] for r in ranks), []) == single[k * batch:(k + 1) * batch]
    with pytest.raises(ValueError, match="does not split evenly"):
        EpochSampler(n, 0, 0, 3, batch)


def test_what_data_parallel_training_refuses(workspace, monkeypatch):
    import tracker.distributed as distributed

    session = distributed.Session(rank=0, local_rank=0, world_size=3, backend="gloo", device=torch.device("cpu"))
    monkeypatch.setattr(distributed, "_ACTIVE", session)
    with pytest.raises(ConfigError, match=r"trainer.batch_size=4 is not allowed under torchrun with 3"):
        Trial(compose("train", _overrides(workspace)), workspace / "x")
    with pytest.raises(ConfigError, match=r"trainer.fidelity=head under torchrun"):
        Trial(compose("train", _overrides(workspace, "trainer.fidelity=head", "trainer.batch_size=6")),
              workspace / "y")
