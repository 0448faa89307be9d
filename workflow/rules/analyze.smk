"""Free-energy analysis: reference, FES with error bars over all rounds, summary, plots."""


rule reference:
    input:
        config=CONFIG_FILE,
        # a reference file of the user's: an edit of it reruns the analysis
        given=CAMPAIGN.analysis.reference_file or [],
    output:
        f"{RESULTS}/reference.csv",
    resources:
        runtime=120,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/reference.log",
    conda:
        ENV
    message:
        "Reference FES ({CAMPAIGN.analysis.reference})"
    shell:
        "cgflow reference --config {input.config} --out {output} > {log} 2>&1"


rule convergence:
    input:
        config=CONFIG_FILE,
        samples=[f"{round_dir(k)}/samples.parquet" for k in ROUNDS],
        weights=[f"{round_dir(k)}/weights.parquet" for k in ROUNDS],
        biases=[b for b in map(applied_bias, ROUNDS) if b],
        peers=peer_outputs(),
        reference=f"{RESULTS}/reference.csv",
    output:
        csv=report(f"{RESULTS}/convergence.csv", caption="../report/convergence.rst", category="Convergence"),
        summary=f"{RESULTS}/convergence.json",
        plot=report(f"{RESULTS}/plots/convergence.png", caption="../report/convergence.rst", category="Convergence"),
    params:
        peers=" ".join(["--peer", *(f"{m}={RESULTS}/peers/{m}" for m in CAMPAIGN.analysis.peers)])
        if CAMPAIGN.analysis.peers
        else "",
    log:
        f"{RESULTS}/logs/convergence.log",
    conda:
        ENV
    message:
        "FES error vs FG steps: cgflow's rounds" + (f" beside {', '.join(CAMPAIGN.analysis.peers)}" if CAMPAIGN.analysis.peers else "")
    shell:
        "cgflow convergence --config {input.config} --samples {input.samples} --weights {input.weights} {params.peers} "
        "--reference {input.reference} "
        "--out {output.csv} --plot {output.plot} --summary-json {output.summary} > {log} 2>&1"


rule fes:
    input:
        config=CONFIG_FILE,
        samples=[f"{round_dir(k)}/samples.parquet" for k in ROUNDS],
        weights=[f"{round_dir(k)}/weights.parquet" for k in ROUNDS],
        model=f"{round_dir(LAST)}/cg.pt",
        train_reports=[f"{round_dir(k)}/train.json" for k in ROUNDS],
        guide_reports=[f"{round_dir(k)}/guide.json" for k in ROUNDS[:-1]],
        reference=f"{RESULTS}/reference.csv" if has_reference() else [],
        convergence=f"{RESULTS}/convergence.json" if has_reference() else [],
    output:
        fes=report(f"{RESULTS}/fes.csv", caption="../report/fes_csv.rst", category="Free energy"),
        summary=report(f"{RESULTS}/summary.json", caption="../report/summary.rst", category="Free energy"),
    params:
        reference=lambda wildcards, input: f"--reference {input.reference}" if input.reference else "",
        guide=lambda wildcards, input: f"--guide-reports {input.guide_reports}" if input.guide_reports else "",
        convergence=lambda wildcards, input: f"--convergence {input.convergence}" if input.convergence else "",
    log:
        f"{RESULTS}/logs/fes.log",
    conda:
        ENV
    message:
        f"Free-energy surface of {len(ROUNDS)} round(s), reweighted, beside the CG model's"
    shell:
        "cgflow fes --config {input.config} --samples {input.samples} --weights {input.weights} "
        "--model {input.model} --train-reports {input.train_reports} {params.guide} {params.reference} "
        "{params.convergence} "
        "--out {output.fes} --summary {output.summary} > {log} 2>&1"


rule plots:
    input:
        config=CONFIG_FILE,
        fes=rules.fes.output.fes,
        samples=rules.fes.input.samples,
    output:
        fes=report(f"{RESULTS}/plots/fes.png", caption="../report/fes.rst", category="Free energy"),
        hist=report(f"{RESULTS}/plots/cv_histogram.png", caption="../report/cv_histogram.rst", category="Sampling"),
        traces=report(f"{RESULTS}/plots/walker_traces.png", caption="../report/walker_traces.rst", category="Sampling"),
    params:
        out_dir=lambda wildcards, output: Path(output.fes).parent,
    log:
        f"{RESULTS}/logs/plots.log",
    conda:
        ENV
    message:
        "Plots of the FES, CV histogram and walker traces"
    shell:
        "cgflow plot --config {input.config} --fes {input.fes} --samples {input.samples} "
        "--out-dir {params.out_dir} > {log} 2>&1"
