"""FG sampling rounds with OpenMM (one job per round). The validated config they read is written by common.smk."""


rule sample:
    input:
        # config is ancient(): params.config_hash decides reruns (see round_hash)
        unpack(sample_inputs),
    output:
        **sample_outputs(),
    params:
        config_hash=round_hash,
        round=lambda wildcards: int(wildcards.round),
        out_dir=lambda wildcards, output: Path(output.samples).parent,
        extra=sample_args,
        launch=mpi_launcher,
    wildcard_constraints:
        round=r"\d\d",
    threads: 1
    resources:
        runtime=240,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/sample-round-{{round}}.log",
    conda:
        ENV
    message:
        "FG sampling, round {wildcards.round}: {CAMPAIGN.sampling.walkers} walkers x {CAMPAIGN.sampling.steps} steps"
    shell:
        "{params.launch}cgflow sample --config {input.config} --round {params.round} --out-dir {params.out_dir} "
        "{params.extra} > {log} 2>&1"
