# `make test` and `make sweep` set up .venv themselves; the stamps make a second call a no-op.
# `make sweep` installs the package only; `make test` adds the dev extra (pytest, the notebook runner, got10k).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: test sweep trunk venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

# one pytest worker per core, each test file on one worker (its module fixtures, such as generated data, built once)
test: $(DEV_STAMP)
	$(PY) -m pytest -q -n auto --dist loadfile

# the CPU preset: the two reference heads + 12 searched trials on the embedded synthetic data, then the front and
# the references confirmed with 3 seeds each (resumes if rerun), then the report in runs/sweeps/synthetic_cpu/report/.
# SWEEP_WORKERS sweep processes share the study, one torch thread each on 2 cores (the second logs to
# runs/sweeps/synthetic_cpu/workers/1.log)
SWEEP_WORKERS ?= 2
sweep: $(STAMP)
	$(PY) -m search.sweep -m trainer=cpu hydra.sweeper.workers=$(SWEEP_WORKERS)
	$(PY) -m search.report study=synthetic_cpu

# train the CPU preset's baseline trunk once and ship it in assets/trunks/ (make sweep then starts from it);
# on a GPU: make trunk TRUNK_ARGS='trainer.device=cuda trainer.num_workers=7' (about 2.5 min of training on an H200)
TRUNK_ARGS ?=
trunk: $(STAMP)
	$(PY) -m tracker.trunk trainer=cpu $(TRUNK_ARGS)

clean:
	rm -rf $(VENV)
