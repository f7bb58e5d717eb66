# `make test` and `make sweep` set up .venv themselves; the stamp makes a second call a no-op.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test sweep trunk venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# the CPU preset: the two reference heads + 12 searched trials on the embedded synthetic data (resumes if rerun),
# then the Pareto report in runs/sweeps/synthetic_cpu/report/
sweep: $(STAMP)
	$(PY) -m search.sweep -m trainer=cpu
	$(PY) -m search.report study=synthetic_cpu

# train the CPU preset's baseline trunk once and ship it in assets/trunks/ (make sweep then starts from it)
trunk: $(STAMP)
	$(PY) -m tracker.trunk trainer=cpu

clean:
	rm -rf $(VENV)
