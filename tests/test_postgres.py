"""The sweeper on a real PostgreSQL server (tests/postgres_server.py starts a throwaway one): several sweep
processes, started at the same moment on one study in an empty database, share it soundly. The workers are the
fake Hydra app of tests/test_sweep.py (its task never trains a model)."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from postgres_server import advisory_lock_is_free, postgres_server, postgres_url  # noqa: F401  (fixtures)
from test_sweep import BASE, ROOT

APP = Path(__file__).resolve().parent / "test_sweep.py"
# a worker imports what the sweep needs, says it is ready (a file in the barrier folder), then waits for the other
# workers' files: they reach the empty database together (Python's start-up alone spreads them by seconds here)
AT_THE_SAME_MOMENT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import runpy, hydra, optuna, torch, search.study, hydra_plugins.lighttrack_sweeper._impl  # noqa
barrier, n, sys.argv = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
(barrier / str(os.getpid())).touch()
ready = time.time()
while len(list(barrier.iterdir())) < n and time.time() < ready + 300:
    time.sleep(0.005)
{then}
"""


def _at_once(n: int, then: str, args: list[list[str]], barrier: Path) -> list[subprocess.CompletedProcess]:
    """n processes that run `then` (with sys.argv = args[i]) at the same moment; their results."""
    barrier.mkdir()
    code = AT_THE_SAME_MOMENT.format(root=str(ROOT), then=then)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(barrier), str(n), *args[i]], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(n)]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [subprocess.CompletedProcess(p.args, p.returncode, out, "") for p, out in zip(procs, outputs)]


def test_workers_create_the_tables_of_an_empty_database_at_once(postgres_server, tmp_path):
    """Optuna creates its tables, types and version rows when a storage is first opened; concurrent creators
    collide (IntegrityError on `CREATE TYPE studydirection`, duplicate version rows). Every opener must
    succeed, each time (a race is a matter of luck: eight empty databases, four openers each)."""
    urls = [postgres_server.create_database() for _ in range(8)]
    then = ("from search.study import open_storage\n"
            "for url in sys.argv:\n"
            "    optuna.create_study(study_name='s', storage=open_storage(url), load_if_exists=True)\n"
            "print('opened', len(sys.argv))")
    results = _at_once(4, then, [urls] * 4, tmp_path / "barrier")
    for r in results:
        assert r.returncode == 0 and f"opened {len(urls)}" in r.stdout, r.stdout
    for url in urls:
        assert optuna.get_all_study_names(url) == ["s"]


def test_four_workers_share_one_study_in_an_empty_database(postgres_url, tmp_path):
    """Four sweep processes on one new study: every trial number once, no architecture trained twice, each
    reference trained exactly once, exactly the budget trained, nothing left running or waiting."""
    budget = 10
    args = [[str(APP), "-m", f"hydra.sweep.dir={tmp_path / f'w{i}'}", *BASE, f"hydra.sweeper.storage='{postgres_url}'",
             "hydra.sweeper.study_name=shared", f"hydra.sweeper.max_trials={budget}"] for i in range(4)]
    results = _at_once(4, "runpy.run_path(sys.argv[0], run_name='__main__')", args, tmp_path / "barrier")
    for r in results:
        assert r.returncode == 0, r.stdout[-6000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.trials
    report = "\n".join(f"{t.number} {t.state.name} {t.user_attrs.get('role')} trained={t.user_attrs.get('trained')} "
                       f"dup={t.user_attrs.get('duplicate_of')} pid={t.user_attrs.get('pid')} "
                       f"{t.user_attrs.get('note') or t.user_attrs.get('prune_reason') or ''}" for t in trials)
    # every trial number once, and every trial finished
    assert sorted(t.number for t in trials) == list(range(len(trials))), report
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], report
    assert not [t for t in trials if t.state == TrialState.FAIL], report
    trained = [t for t in trials if t.user_attrs.get("trained")]
    # no architecture trained twice (one seed per architecture here: no repeats), and every trained trial ran once
    keys = Counter(t.user_attrs["config_key"] for t in trained)
    assert max(keys.values()) == 1, (keys, report)
    ran = {str(p.parent) for w in range(4) for p in (tmp_path / f"w{w}" / "trials").glob("*/ran")}
    assert ran == {t.user_attrs["run_dir"] for t in trained}, report
    # the references: enqueued once (the workers enqueue under the database's lock; without one, the copies would
    # defer to the lowest-numbered trial of the role: test_only_the_lowest_numbered_trial_of_a_role_is_its_reference)
    # and trained once, first
    for number, role in enumerate(("baseline", "user_head")):
        (reference,) = [t for t in trials if t.user_attrs.get("role") == role]
        assert reference.number == number and reference.user_attrs.get("trained") is True, report
        assert reference.state == TrialState.COMPLETE, report
    # exactly the budget trained; the settled ones (duplicates) are not counted
    assert len(trained) == budget, report
    assert all(t.state == TrialState.COMPLETE for t in trained), report
    # the workers all took part, each with its own sampler stream
    assert study.user_attrs["sweep_processes"] == 4, report
    assert len({t.user_attrs["pid"] for t in trained}) >= 2, report


def test_the_study_lock_is_the_databases(postgres_url):
    """On PostgreSQL the sweeper's check-then-write steps (enqueueing the references, asking a trial) hold an
    advisory lock of the database: a process on another machine cannot take it meanwhile, and it is free after."""
    from search.study import study_lock

    def free() -> bool:  # another session tries the lock (and lets it go again)
        return advisory_lock_is_free(postgres_url)

    assert free()
    with study_lock(postgres_url):
        assert not free()
    assert free()
    try:
        with study_lock(postgres_url):
            raise RuntimeError("a step failed")
    except RuntimeError:
        pass
    assert free()


# -- the rules that keep concurrent workers sound on a storage without a lock (no server needed) ----------------
def test_two_running_copies_never_defer_to_each_other():
    from hydra_plugins.lighttrack_sweeper._impl import SweeperImpl

    study = optuna.create_study()
    low, high = study.ask(), study.ask()
    for t in (low, high):
        t.set_user_attr("config_key", "k")
    assert SweeperImpl._earlier(study, "k", high.number).number == low.number
    assert SweeperImpl._earlier(study, "k", low.number) is None  # the lower one trains
    high.set_user_attr("duplicate_of", low.number)  # settled as the lower one's duplicate: nobody's original
    study.tell(high, state=TrialState.PRUNED)
    later = study.ask()
    later.set_user_attr("config_key", "k")
    assert SweeperImpl._earlier(study, "k", later.number).number == low.number
    study.tell(low, state=TrialState.FAIL)  # a failed original may rerun: nothing to defer to
    assert SweeperImpl._earlier(study, "k", later.number) is None
    done = study.ask()
    done.set_user_attr("config_key", "k")
    study.tell(done, 1.0)
    assert SweeperImpl._earlier(study, "k", later.number).number == done.number  # a COMPLETE one, whatever its number


def test_only_the_lowest_numbered_trial_of_a_role_is_its_reference():
    from hydra_plugins.lighttrack_sweeper._impl import SweeperImpl

    study = optuna.create_study()
    for role in ("baseline", "user_head", "baseline", "user_head"):  # two processes enqueued them at once
        study.enqueue_trial({}, user_attrs={"role": role})
    trials = [study.ask() for _ in range(4)]
    assert [SweeperImpl._reference(study, "baseline", t.number) for t in trials[::2]] == [None, study.trials[0]]
    assert SweeperImpl._reference(study, "user_head", 3).number == 1
    # a reference whose sweep process died is enqueued again: the new one counts
    trials[0].set_user_attr("orphaned", True)
    assert SweeperImpl._reference(study, "baseline", 2) is None
    # a confirmation repeat of a reference (its role kept) is not the reference
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs={"role": "baseline", "stage": "confirm"})
    study.enqueue_trial({}, user_attrs={"role": "baseline"})
    assert SweeperImpl._reference(study, "baseline", [study.ask() for _ in range(2)][1].number) is None
