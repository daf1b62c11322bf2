# make demo : set up the environment and run the whole workflow on synthetic data
# make test : set up the environment and run the test suite (what CI runs)
# make test-fast : the unit tests only (no end-to-end demo, no SLURM): the inner loop
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
CORES ?= all

.PHONY: setup demo test test-fast lint report clean

setup:
	VENV=$(VENV) bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml
	$(VENV)/bin/snakemake --cores 1 --configfile config/config.yaml --report results/report.html

test: setup
	$(PY) -m pytest -v --durations=20 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/snakemake --lint --configfile config/config.yaml
	$(VENV)/bin/snakefmt --check Snakefile workflow/rules
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check

report: setup
	$(VENV)/bin/snakemake --cores 1 --configfile config/config.yaml --report results/report.html

clean:
	rm -rf results .snakemake
