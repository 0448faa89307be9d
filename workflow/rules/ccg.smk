"""Cycle coarse graining (METHODS.md §2): train the reconstruction flow, then F(s) from it alone.

Only requested when the config has a ``ccg:`` section (see ``ccg_targets`` in common.smk);
outputs under results/<campaign>/ccg/. With the default grid conditioning and no NLL the flow
needs the config only (no FG frames); otherwise it reads every round's samples. For alanine
dipeptide ccg_fes also reads the reference (when analysis.reference is not none) and writes
backmapped.dcd + backmapped.pdb.
"""


rule reconstruct:
    input:
        # config is ancient(): params.config_hash (flow + training keys) decides reruns
        config=ancient(CONFIG_FILE),
        samples=ccg_samples(),
    output:
        flow=f"{RESULTS}/ccg/flow.pt",
        flow_json=f"{RESULTS}/ccg/flow.json",
        history=f"{RESULTS}/ccg/train.json",
    params:
        config_hash=CAMPAIGN.stage_hash("ccg") if CAMPAIGN.ccg else "",
        samples=lambda wildcards, input: f"--samples {input.samples}" if input.samples else "",
        out_dir=lambda wildcards, output: Path(output.flow).parent,
    threads: 1
    log:
        f"{RESULTS}/logs/ccg-reconstruct.log",
    conda:
        ENV
    message:
        "Training the reconstruction flow q(y|s) by reverse KL on the FG energy"
    shell:
        "cgflow reconstruct --config {input.config} --out-dir {params.out_dir} {params.samples} > {log} 2>&1"


rule ccg_fes:
    input:
        config=CONFIG_FILE,
        flow=rules.reconstruct.output.flow,
        flow_json=rules.reconstruct.output.flow_json,
        reference=ccg_reference(),
    output:
        fes=report(f"{RESULTS}/ccg/ccg_fes.csv", category="Cycle coarse graining"),
        diagnostics=f"{RESULTS}/ccg/diagnostics.csv",
        plot=report(f"{RESULTS}/ccg/ccg_fes.png", category="Cycle coarse graining"),
        summary=f"{RESULTS}/ccg/summary.json",
        **ccg_backmapped(),
    params:
        out_dir=lambda wildcards, output: Path(output.fes).parent,
        reference=lambda wildcards, input: f"--reference {input.reference}" if input.reference else "",
    threads: 1
    log:
        f"{RESULTS}/logs/ccg-fes.log",
    conda:
        ENV
    message:
        "Free energy at every grid point from the flow alone (importance sampling, ESS trust flags)"
    shell:
        "cgflow ccg-fes --config {input.config} --flow {input.flow} --flow-json {input.flow_json} "
        "--out-dir {params.out_dir} {params.reference} > {log} 2>&1"


rule ccg_compare:
    input:
        config=CONFIG_FILE,
        ccg_fes=rules.ccg_fes.output.fes,
        ccg_summary=rules.ccg_fes.output.summary,
        fes=f"{RESULTS}/fes.csv",
        summary=f"{RESULTS}/summary.json",
    output:
        table=f"{RESULTS}/ccg/comparison.csv",
        result=f"{RESULTS}/ccg/comparison.json",
        plot=report(f"{RESULTS}/ccg/comparison.png", category="Cycle coarse graining"),
    params:
        out_dir=lambda wildcards, output: Path(output.table).parent,
    threads: 1
    log:
        f"{RESULTS}/logs/ccg-compare.log",
    conda:
        ENV
    message:
        "The CCG free energy beside the rounds' FES and the reference, with their costs"
    shell:
        "cgflow ccg-compare --config {input.config} --ccg-fes {input.ccg_fes} --ccg-summary {input.ccg_summary} "
        "--fes {input.fes} --summary {input.summary} --out-dir {params.out_dir} > {log} 2>&1"
