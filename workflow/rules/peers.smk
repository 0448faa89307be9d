"""Peers run beside cgflow with its FG step budget and walkers: unbiased MD and OpenMM's
well-tempered metadynamics (one job each; cgflow/sampling/metadynamics.py)."""


rule peer_unbiased:
    input:
        # the hashes below decide reruns; analysis-only config changes keep the samples
        config=ancient(CONFIG_FILE),
    output:
        samples=f"{RESULTS}/peers/unbiased/samples.parquet",
    params:
        sampling_hash=CAMPAIGN.stage_hash("sampling"),
        rounds=CAMPAIGN.guidance.rounds,
        out_dir=lambda wildcards, output: Path(output.samples).parent,
    threads: 1
    resources:
        runtime=240,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/peer-unbiased.log",
    conda:
        ENV
    message:
        f"Unbiased MD peer: {CAMPAIGN.sampling.walkers} walkers, cgflow's budget of {len(CAMPAIGN.rounds)} round(s)"
    shell:
        "cgflow peer --config {input.config} --method unbiased --out-dir {params.out_dir} > {log} 2>&1"


rule peer_metadynamics:
    input:
        config=ancient(CONFIG_FILE),
    output:
        samples=f"{RESULTS}/peers/metadynamics/samples.parquet",
        snapshots=f"{RESULTS}/peers/metadynamics/fes_snapshots.npz",
    params:
        sampling_hash=CAMPAIGN.stage_hash("sampling"),
        rounds=CAMPAIGN.guidance.rounds,
        gamma=CAMPAIGN.guidance.gamma,
        metadynamics=json.dumps(CAMPAIGN.analysis.metadynamics, sort_keys=True),
        budget_points=CAMPAIGN.analysis.budget_points,
        bins=list(CAMPAIGN.analysis.bins),
        out_dir=lambda wildcards, output: Path(output.samples).parent,
    threads: 1
    resources:
        runtime=240,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/peer-metadynamics.log",
    conda:
        ENV
    message:
        f"Well-tempered metadynamics peer (OpenMM): {CAMPAIGN.sampling.walkers} walkers sharing one bias, "
        f"cgflow's budget of {len(CAMPAIGN.rounds)} round(s)"
    shell:
        "cgflow peer --config {input.config} --method metadynamics --out-dir {params.out_dir} > {log} 2>&1"
