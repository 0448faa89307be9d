"""Reweighting of all rounds so far (TRAM or MBAR) and the CG model ensemble of each round."""


rule reweight:
    input:
        unpack(round_inputs),
        unpack(previous_weights),
        config=ancient(CONFIG_FILE),
    output:
        f"{RESULTS}/round-{{round}}/weights.parquet",
    params:
        config_hash=round_hash,
        biases=bias_args,
        previous=previous_arg,
    wildcard_constraints:
        round=r"\d\d",
    resources:
        runtime=60,
        mem_mb=8000,
    log:
        f"{RESULTS}/logs/reweight-round-{{round}}.log",
    conda:
        ENV
    message:
        "Frame weights of rounds 0..{wildcards.round} ({CAMPAIGN.guidance.estimator})"
    shell:
        "cgflow reweight --config {input.config} --samples {input.samples} --biases {params.biases} "
        "{params.previous} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(round_inputs),
        config=ancient(CONFIG_FILE),
        weights=f"{RESULTS}/round-{{round}}/weights.parquet",
    output:
        model=f"{RESULTS}/round-{{round}}/cg.pt",
        history=f"{RESULTS}/round-{{round}}/train.json",
    params:
        config_hash=CAMPAIGN.stage_hash("guidance"),
        round=lambda wildcards: int(wildcards.round),
    wildcard_constraints:
        round=r"\d\d",
    threads: 1
    resources:
        runtime=120,
        mem_mb=8000,
    log:
        f"{RESULTS}/logs/train-round-{{round}}.log",
    conda:
        ENV
    message:
        "Training the CG model ensemble of round {wildcards.round}"
    shell:
        "cgflow train --config {input.config} --round {params.round} --samples {input.samples} "
        "--weights {input.weights} --out {output.model} --history {output.history} > {log} 2>&1"
