"""The bias policy: round k's CG model -> the bias and walker starts of round k+1."""


rule guide:
    input:
        unpack(round_inputs),
        config=ancient(CONFIG_FILE),
        model=f"{RESULTS}/round-{{round}}/cg.pt",
        weights=f"{RESULTS}/round-{{round}}/weights.parquet",
    output:
        bias=f"{RESULTS}/round-{{round}}/bias.npz",
        starts=f"{RESULTS}/round-{{round}}/starts.npz",
        report=f"{RESULTS}/round-{{round}}/guide.json",
    params:
        config_hash=CAMPAIGN.stage_hash("guidance"),
        round=lambda wildcards: int(wildcards.round),
    wildcard_constraints:
        round=r"\d\d",
    resources:
        runtime=30,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/guide-round-{{round}}.log",
    conda:
        ENV
    message:
        "Bias policy (VES) and walker seeding for round {wildcards.round}+1"
    shell:
        "cgflow guide --config {input.config} --round {params.round} --model {input.model} "
        "--samples {input.samples} --weights {input.weights} --bias {output.bias} "
        "--starts {output.starts} --report {output.report} > {log} 2>&1"
