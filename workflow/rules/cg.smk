"""Bead CG potentials (METHODS.md §3-4): mapped FG data, then one model per objective.

Only requested when the config has a ``cg:`` section (see ``cg_targets`` in common.smk);
outputs under results/<campaign>/cg/.
"""


rule cg_sample:
    input:
        # config is ancient(): params.config_hash (sampling + the cg data keys) decides reruns
        unpack(cg_fg_inputs),
    output:
        f"{RESULTS}/cg/fg_mapped.npz",
    params:
        config_hash=CAMPAIGN.stage_hash("cg_data") if CAMPAIGN.cg else "",
        rounds=cg_fg_args,
    threads: 1
    resources:
        runtime=120,
        mem_mb=4000,
    log:
        f"{RESULTS}/logs/cg-sample.log",
    conda:
        ENV
    message:
        "Mapped bead positions and forces for the CG stage (its own FG run, or the rounds)"
    shell:
        "cgflow cg-sample --config {input.config} --out {output} {params.rounds} > {log} 2>&1"


rule cg_train:
    input:
        config=ancient(CONFIG_FILE),
        fg=rules.cg_sample.output,
    params:
        # config is ancient(): this hash (FG data + every cg key but the objectives list) decides reruns
        config_hash=CAMPAIGN.stage_hash("cg") if CAMPAIGN.cg else "",
    output:
        model=f"{RESULTS}/cg/{{objective}}/model.pt",
        history=f"{RESULTS}/cg/{{objective}}/train.json",
        traj=f"{RESULTS}/cg/{{objective}}/cg_md.dcd",
        fes=f"{RESULTS}/cg/{{objective}}/fes.csv",
        summary=f"{RESULTS}/cg/{{objective}}/summary.json",
    wildcard_constraints:
        objective=r"fm|re|difftre|fm\+re",
    threads: 1
    resources:
        runtime=240,
        mem_mb=8000,
    log:
        f"{RESULTS}/logs/cg-train-{{objective}}.log",
    conda:
        ENV
    message:
        "Training the bead CG potential by {wildcards.objective}, CG MD and its phi/psi FES"
    shell:
        "cgflow cg-train --config {input.config} --objective {wildcards.objective} --fg {input.fg} "
        "--out-dir $(dirname {output.model}) > {log} 2>&1"
