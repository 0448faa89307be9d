"""cgflow campaign: FG sampling with OpenMM, free energies, (later) CG models and CG-guided rounds.

    snakemake --cores all                      # the default campaign, config/config.yaml
    snakemake --configfile my.yaml --cores all # your own campaign
    snakemake --profile profiles/slurm         # on a SLURM cluster

Results go to results/<campaign>/ (see README.md and config/README.md).
"""

from snakemake.utils import min_version

min_version("9.0")


# A --configfile replaces the default campaign instead of being merged into it (a merge would
# mix, e.g., a toy's potential into an alanine dipeptide config); --config key=value still
# overrides single keys of whichever config is in use.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/guide.smk"
include: "workflow/rules/peers.smk"
include: "workflow/rules/analyze.smk"
include: "workflow/rules/cg.smk"
include: "workflow/rules/ccg.smk"


# Seconds-long bookkeeping runs where Snakemake runs: on a cluster, a job of its own would wait
# in the queue for longer than it takes.
localrules:
    all,
    plots,


rule all:
    default_target: True
    input:
        campaign_targets(),
