# make demo : set up the environment and run the whole workflow on synthetic data
# make controls : after the demo, the window-source controls (lesion_cl_random, lesion_cl_truth);
#                 the kappa table and the report then include them
# make test : set up the environment and run the test suite (what CI runs)
# make test-fast : the unit tests only (no end-to-end demo, no SLURM): the inner loop
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
CORES ?= all

.PHONY: setup demo controls test test-fast lint report clean

setup:
	VENV=$(VENV) bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml
	$(VENV)/bin/snakemake --cores 1 --configfile config/config.yaml --report results/report.html
	@cat results/tables/kappa.md
	@if [ -f results/tables/external.md ]; then cat results/tables/external.md; fi
	@echo "Report: results/report.html"

controls: setup
	$(VENV)/bin/snakemake --cores $(CORES) controls --configfile config/config.yaml
	$(VENV)/bin/snakemake --cores $(CORES) --configfile config/config.yaml
	$(VENV)/bin/snakemake --cores 1 --configfile config/config.yaml --report results/report.html
	@cat results/tables/kappa.md
	@if [ -f results/tables/external.md ]; then cat results/tables/external.md; fi
	@echo "Report: results/report.html"

# Two pytest-xdist workers: the end-to-end demo runs on one while the SLURM tests (which
# mostly wait for time limits) and the unit tests run on the other.
test: setup
	$(PY) -m pytest -v -n 2 --dist loadgroup --durations=20 $(PYTEST_ARGS)

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
