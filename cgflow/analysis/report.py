"""The campaign's final results: fes.csv (all rounds reweighted, beside the CG model's own free
energy and the reference), summary.json (headline figures, per-round diagnostics,
convergence, provenance) and the plots.

Where walkers crossed into a region but no transition has yet brought one back (or the
reverse), TRAM cannot place it and its frames carry MBAR's weights, which rest on each round
having been in equilibrium under its bias: a basin found late comes out too high, because the
earlier rounds that could have entered it and did not count against it (alanine's C7ax: about +7 kT
for the three rounds after it was found). Such bins are reported, not hidden:
``connected_share`` in fes.csv, ``bins_outside_connected`` in summary.json, hatched on the plot."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from cgflow.analysis.campaign import cv_edges, read_samples
from cgflow.analysis.fes import (compare_to_reference, connected_share, fes_frame, histogram_fes, mostly_outside,
                                 read_fes_csv, write_fes_csv)
from cgflow.io import package_versions, read_provenance, write_json

log = logging.getLogger(__name__)

GAP_WARN_KT = 2.0
"""A last round whose CG model and policy PMF (``gap_cg_vs_policy_kT``) still disagree by more
than this is reported as unconverged. Converged bench campaigns ended at 0.5-1.2 kT (Müller-Brown
at 300 K, the 2-D double well, alanine); Müller-Brown along x at 150 K, whose rounds could not
equilibrate across a barrier x hides, ended at 3.4 kT (2-6.6 in most rounds after the crossing)
with its FES 4.7 kT off (tests/benchmarks/HISTORY.md). A heuristic from these few campaigns."""


def round_fes(campaign, df, weights_path: Path):
    """The FES from the frames and weights of one round's weights.parquet, and per bin the share
    of its weight on frames inside TRAM's connected set (NaN where no weight fell; all 1 for MBAR
    and for weights files written before the ``connected`` column)."""
    from cgflow.analysis.reweight import attach_weights

    names = list(campaign.system.cv_names)
    part = attach_weights(campaign, df[df["round"].isin(_rounds_in(weights_path))], weights_path)
    cv, w, edges = part[names].to_numpy(), part["weight"].to_numpy(), cv_edges(campaign)
    fes = histogram_fes(cv, edges, campaign.sampling.kT, weights=w, blocks=part["walker"].to_numpy(),
                        strata=part["round"].to_numpy(), n_bootstrap=campaign.analysis.bootstrap, seed=campaign.seed)
    inside = part["connected"].to_numpy(dtype=bool) if "connected" in part else np.ones(len(part), dtype=bool)
    return fes, connected_share(cv, edges, w, inside)


def _rounds_in(weights_path: Path) -> list[int]:
    return list(range(len(read_provenance(weights_path)["n_k"])))


def cg_fes(campaign, model_path: Path) -> np.ndarray:
    """The CG ensemble's mean free energy integrated over each analysis bin
    (:func:`cgflow.analysis.fes.bin_free_energy`, from 8 grid intervals per bin), kJ/mol, min 0."""
    from cgflow.analysis.fes import bin_free_energy
    from cgflow.guidance.campaign import ensemble_at
    from cgflow.models.cv_energy import load
    from cgflow.training.campaign import model_grid

    model, _ = load(model_path, campaign.system.cv_names)
    edges = cv_edges(campaign)
    axes = [np.linspace(e[0], e[-1], 8 * (len(e) - 1) + 1) for e in edges]
    nodes = np.meshgrid(*axes, indexing="ij")
    F, _ = ensemble_at(model, model_grid(campaign), campaign.sampling.kT, np.stack([n.ravel() for n in nodes], axis=-1))
    F = bin_free_energy(axes, F.reshape(nodes[0].shape), edges, campaign.sampling.kT)
    return F - F.min()


def _json(path: Path | None) -> dict:
    return json.loads(Path(path).read_text()) if path else {}


def write_fes(campaign, samples: list[Path], weights: list[Path], model: Path, train_reports: list[Path],
              guide_reports: list[Path], reference: Path | None, convergence: Path | None,
              out: Path, summary: Path) -> None:
    t0 = time.perf_counter()
    names = list(campaign.system.cv_names)
    kT, cutoff = campaign.sampling.kT, campaign.analysis.rmse_cutoff_kT
    df, prov = read_samples(campaign, samples)
    ref = read_fes_csv(reference, names) if reference else None
    per_round, shares = zip(*[round_fes(campaign, df, w) for w in weights])
    fes, share = per_round[-1], shares[-1]
    frame = fes_frame(fes, names, ref)
    # beyond the frames, the CG model's F is the network's extrapolation, which would read as data
    # in fes.csv (a short hills campaign's model put a flat basin, 3 kT up, past the last visited
    # bin); it is scored whole, so that the mass it puts where no frame fell counts
    F_model = cg_fes(campaign, model)
    F_cg = np.where(np.isfinite(fes.F), F_model, np.nan)
    F_cg -= np.nanmin(F_cg)
    frame.insert(frame.columns.get_loc("F_err_kJmol") + 1, "F_cg_kJmol", F_cg.ravel())
    frame.insert(frame.columns.get_loc("F_cg_kJmol") + 1, "connected_share", share.ravel())
    write_fes_csv(frame, out)

    rounds = []
    for k, (w, fk, sk) in enumerate(zip(weights, per_round, shares)):
        meta = read_provenance(w)
        entry = {"round": k, "fg_steps": int(sum(p["fg_steps"] for p in prov[: k + 1])),
                 "estimator": meta.get("estimator", "mbar"), "ess": meta["ess"],
                 "ess_per_round": meta["ess_per_round"], "mbar_overlap": meta["overlap"],
                 "bins_outside_connected": int(mostly_outside(sk).sum()),
                 "fes_change_kT": None if k == 0 else _change(fk, per_round[k - 1], kT, cutoff)}
        if ref is not None:
            entry["rmse_vs_reference_kT"] = compare_to_reference(fk, ref, kT, cutoff)["rmse_kT"]
        if k < len(guide_reports):
            entry["gap_cg_vs_policy_kT"] = _json(guide_reports[k]).get("gap_kT")
        rounds.append(entry)

    result = {
        "campaign": campaign.name,
        "system": campaign.system.potential or campaign.system.type,
        "cvs": names,
        "units": {"F": "kJ/mol", "rmse": "kT", "time": "s"},
        "temperature_K": campaign.sampling.temperature,
        "kT_kJmol": kT,
        "rounds": len(weights),
        "rmse_vs_reference_kT": None,
        "reference_coverage": None,
        "cg_rmse_vs_reference_kT": None,
        "cg_outside_mass": None,
        "fg_steps_total": int(sum(p["fg_steps"] for p in prov)),
        "n_frames": len(df),
        "platforms": sorted({p["platform"] for p in prov}),
        "bins_outside_connected": rounds[-1]["bins_outside_connected"],
    }
    if ref is not None:
        cmp = compare_to_reference(fes, ref, kT, cutoff)
        cg = compare_to_reference(_as_fes(fes, F_model), ref, kT, cutoff)
        result.update(rmse_vs_reference_kT=cmp["rmse_kT"], reference_coverage=cmp["coverage"],
                      reference_bins_below_cutoff=cmp["n_bins"], rmse_cutoff_kT=cutoff,
                      cg_rmse_vs_reference_kT=cg["rmse_kT"], cg_outside_mass=cg["outside_mass"])
    result["per_round"] = rounds
    result["convergence"] = _json(convergence) or None
    job_wall = [_json(p).get("wall_s", 0.0) for p in [*train_reports, *guide_reports]]
    result["wall_s"] = float(sum(p["wall_s"] for p in prov) + sum(job_wall) + time.perf_counter() - t0)
    result["provenance"] = {"config_hash": campaign.hash, "seed": campaign.seed,
                            "versions": package_versions(), "rounds": prov}
    write_json(summary, result)
    warn_if_unconverged(rounds, summary.name)
    if result["bins_outside_connected"]:
        log.warning("%d FES bins hold mostly frames outside TRAM's connected set (no walker has crossed "
                    "back): their depth rests on MBAR's equilibrium assumption alone, which puts a basin found "
                    "late too high; more rounds connect them (connected_share in %s)",
                    result["bins_outside_connected"], out.name)
    log.info("FES: rmse vs reference %s kT (CG model %s kT), coverage %s", result["rmse_vs_reference_kT"],
             result["cg_rmse_vs_reference_kT"], result["reference_coverage"])


def warn_if_unconverged(rounds: list[dict], where: str) -> bool:
    """Warn (and say so) when the last guided round's ``gap_cg_vs_policy_kT`` exceeds GAP_WARN_KT:
    a FES whose rounds did not equilibrate can stop changing from round to round while kT off."""
    gaps = [r["gap_cg_vs_policy_kT"] for r in rounds if r.get("gap_cg_vs_policy_kT") is not None]
    if not gaps or gaps[-1] <= GAP_WARN_KT:
        return False
    log.warning("the CG model and the policy's PMF still disagree by %.2g kT after the last guided round "
                "(gap_cg_vs_policy_kT in %s; they agree at convergence, converged campaigns end below %.2g kT): "
                "the rounds may not have equilibrated under their biases, as where the CVs hide a slow "
                "coordinate, and the FES may be kT off though it no longer changes from round to round; check it "
                "with more rounds or with CVs that resolve the barrier", gaps[-1], where, GAP_WARN_KT)
    return True


def _change(fes, previous, kT: float, cutoff: float) -> float:
    """RMSE (kT) between consecutive rounds' FES, over bins below the cutoff in the previous one."""
    return compare_to_reference(fes, previous.F, kT, cutoff)["rmse_kT"]


def _as_fes(template, F):
    from dataclasses import replace

    return replace(template, F=F, F_err=np.full_like(F, np.nan))


def write_plots(campaign, fes_csv: Path, samples: list[Path], out_dir: Path) -> None:
    from cgflow.analysis.fes import read_fes_frame
    from cgflow.analysis.plots import plot_cv_histogram, plot_fes, plot_walker_traces

    if campaign.system.is_toy:
        units = [cv.unit for cv in campaign.system.build().cvs]
    else:
        units = ["rad"] * len(campaign.system.cv_names)
    labels = {name: f"{name} ({unit})" if unit else name for name, unit in zip(campaign.system.cv_names, units)}
    names = list(labels.values())
    df, _ = read_samples(campaign, samples)
    df = df.rename(columns=labels)
    title = f"{campaign.name}: {campaign.system.potential or campaign.system.type}"
    frame = read_fes_frame(fes_csv, campaign.system.cv_names).rename(columns=labels)
    plot_fes(frame, names, out_dir / "fes.png", title=title)
    plot_cv_histogram(df, names, out_dir / "cv_histogram.png")
    plot_walker_traces(df, names, out_dir / "walker_traces.png")
