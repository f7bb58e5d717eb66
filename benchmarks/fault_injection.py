"""Faults, injected (issue 14): a tiny real sweep killed with SIGKILL at random points, rerun after each kill.

    python benchmarks/fault_injection.py                  # 10 kills, journal storage, in a temporary runs root
    python benchmarks/fault_injection.py --kills 12 --seed 3 --keep runs/faults

Each round starts `search.sweep` (tiny preset, head fidelity, tiny generated data, real training and checkpoints)
in its own process group, waits a random time and kills the whole group (the sweep and any worker) with SIGKILL,
wherever it is: composing, training, writing a checkpoint, telling the study. Then the next round reruns the same
command. After the kills, a last run goes to the end, then the report is built. Printed: where each kill landed
(the study's states at that moment) and the counts that must hold: completed trials lost (a COMPLETE trial that
is no longer COMPLETE), completed architectures trained twice (same head, same seed), trials left RUNNING or
WAITING, the references present, and whether the report built. Exits 1 when any of them is wrong.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = "synthetic_tiny"
SWEEP = ["-m", "search.sweep", "-m", "trainer=tiny", "trainer.fidelity=head", "hydra.sweeper.confirm.seeds=2", "hydra.sweeper.confirm.front=2", "data.generate.train_sequences=4",
         "data.generate.val_sequences=2", "data.generate.frames=12", "evaluation.max_sequences=2",
         "latency=quick"]


def _study(runs: Path):
    import optuna

    from search.study import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=STUDY, storage=open_storage(str(runs / "sweeps" / STUDY / "journal.log")))


def _states(runs: Path) -> Counter:
    try:
        return Counter(t.state.name for t in _study(runs).trials)
    except Exception as error:  # noqa: BLE001  (no study yet, or the journal being written)
        return Counter({type(error).__name__: 1})


def _complete(runs: Path) -> set[int]:
    try:
        return {t.number for t in _study(runs).trials if t.state.name == "COMPLETE"}
    except Exception:  # noqa: BLE001
        return set()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-wait", type=float, default=25.0, help="longest time before a kill, seconds")
    parser.add_argument("--trials", type=int, default=12, help="the sweep's max_trials (more: more room for kills)")
    parser.add_argument("--keep", type=Path, default=None, help="runs root to use and keep (default: a temp dir)")
    parser.add_argument("extra", nargs="*", help="more sweep overrides (hydra.sweeper.heartbeat_interval=1 ...)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    runs = (args.keep or Path(tempfile.mkdtemp(prefix="lighttrack-faults-"))).resolve()
    env = {**os.environ, "LIGHTTRACK_RUNS": str(runs), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, *SWEEP, f"hydra.sweeper.max_trials={args.trials}", *args.extra]
    seen_complete: set[int] = set()
    started = time.perf_counter()
    print(f"runs root: {runs}\ncommand: {' '.join(command[1:])}")
    kills = rounds = 0
    while kills < args.kills:
        rounds += 1
        wait = rng.uniform(1.0, args.max_wait)
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=wait)
            print(f"round {rounds}: the sweep finished before its kill ({wait:.1f} s): the study is complete; "
                  f"{kills} kills landed (more: --trials or a shorter --max-wait)")
            break
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            states = _states(runs)
            print(f"kill {kills} after {wait:4.1f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
        seen_complete |= _complete(runs)
    final = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    report = subprocess.run([sys.executable, "-m", "search.report", f"study={STUDY}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)
    trials = _study(runs).trials
    complete = {t.number for t in trials if t.state.name == "COMPLETE"}
    trained = Counter((repr(sorted(t.user_attrs["head"].items())), t.user_attrs.get("seed")) for t in trials
                      if t.state.name == "COMPLETE" and t.user_attrs.get("trained") and t.user_attrs.get("head"))
    roles = Counter(t.user_attrs.get("role") for t in trials if t.state.name == "COMPLETE" and t.user_attrs.get("role"))
    counts = {
        "kills": kills,
        "final run exit status": final.returncode,
        "completed trials lost": len(seen_complete - complete),
        "architectures (head, seed) completed twice": sum(n > 1 for n in trained.values()),
        "trials left RUNNING or WAITING": sum(t.state.name in ("RUNNING", "WAITING") for t in trials),
        "references completed": dict(roles),
        "trials": dict(Counter(t.state.name for t in trials)),
        "report built": report.returncode == 0 and (runs / "sweeps" / STUDY / "report" / "summary.md").is_file(),
        "seconds": round(time.perf_counter() - started),
    }
    for name, value in counts.items():
        print(f"{name}: {value}")
    bad = (final.returncode != 0 or counts["completed trials lost"] or counts["architectures (head, seed) completed twice"]
           or counts["trials left RUNNING or WAITING"] or set(roles) != {"baseline", "user_head"}
           or not counts["report built"])
    if bad:
        print("FAILED\n" + final.stdout[-3000:] + final.stderr[-3000:] + report.stderr[-2000:])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
