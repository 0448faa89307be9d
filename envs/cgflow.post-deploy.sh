#!/usr/bin/env bash
# Installs cgflow into the conda environment Snakemake has just created from cgflow.yaml.
# Snakemake runs a copy of this script from .snakemake/conda/, so the checkout is found through
# CGFLOW_SOURCE, which workflow/rules/common.smk sets to the folder of the Snakefile.
set -euo pipefail
: "${CGFLOW_SOURCE:?not set: run this through snakemake --software-deployment-method conda}"
python -m pip install -c "$CGFLOW_SOURCE/envs/constraints.txt" -e "$CGFLOW_SOURCE"
