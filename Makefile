# cgflow: `make run` (default campaign) and `make test` (test suite) set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= config/config.yaml
CORES ?= all
# torch is pinned to the CPU build that installs from local disk here; on a CUDA cluster
# run `make TORCH=` after installing your own torch build into the venv.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.cgflow-installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run report test test-fast bench bench-rounds bench-cg bench-ccg bench-mpi slurm-up slurm-down clean-results

install: $(STAMP)

$(STAMP): pyproject.toml envs/constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c envs/constraints.txt $(TORCH)
	$(BIN)/python -m pip install -q -c envs/constraints.txt -e '.[test]'
	@touch $@

run: install
	$(BIN)/snakemake --configfile $(CONFIG) --cores $(CORES)
	$(MAKE) --no-print-directory report

report: install
	$(BIN)/snakemake --configfile $(CONFIG) --report "$$($(BIN)/cgflow validate $(CONFIG) --results-dir)/report.html"

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not workflow"

bench: install
	$(BIN)/python tests/benchmarks/bench_sampling.py

# FG steps to the target FES error: cgflow's rounds vs unbiased MD vs metadynamics (tens of minutes)
bench-rounds: install
	$(BIN)/python tests/benchmarks/bench_rounds.py

# bead CG on alanine: FM vs RE FES RMSE, stability at 2 fs, largest stable dt, CG/FG speed, long Henderson check
bench-cg: install
	$(BIN)/python tests/benchmarks/bench_cg.py

# cycle CG: toys (flow-only free energies vs quadrature, cost vs FG MD, the ESS trust cut), then
# the alanine ccg stage (phi/psi FES from the energy alone vs the shipped reference, backmapped
# structures vs FG MD) and hydrogens on heavy-atom beads vs FG MD (~15 min)
bench-ccg: install
	$(BIN)/python tests/benchmarks/bench_ccg.py --fg --trust-study
	$(BIN)/python tests/benchmarks/bench_ccg_alanine.py

# walker throughput with 1 vs 2 MPI ranks; per-job overhead of SLURM vs local (needs make slurm-up)
bench-mpi: install
	$(BIN)/python tests/benchmarks/bench_mpi.py

# a single-node SLURM cluster on this machine (root, Debian) for tests/hpc/test_slurm.py
slurm-up:
	bash .ci/slurm_up.sh

slurm-down:
	bash .ci/slurm_down.sh

clean-results:
	rm -rf results .snakemake
