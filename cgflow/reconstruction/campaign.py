"""Workflow entry points of the ccg stage: ``cgflow reconstruct`` and ``cgflow ccg-fes``.

``reconstruct`` trains the flow and writes ``flow.pt`` + ``flow.json`` (hyper-parameters,
geometry, standardisation, provenance, training cost) and ``train.json`` (the loss curve).
``ccg-fes`` loads it and writes ``ccg_fes.csv`` (F, error, mean force, ESS, trust flag and,
for toys, the exact pointwise PMF), ``diagnostics.csv`` (per-point weight statistics),
``ccg_fes.png`` and ``summary.json`` (errors vs exact over trusted points where F < the
analysis cutoff, untrusted counts, energy evaluations, wall times, provenance).

Seeds: the flow's initial weights use the campaign seed, training ``seed + 1`` and the
estimator ``seed + 2``, so each stream is reproducible on its own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cgflow.io import write_json

log = logging.getLogger(__name__)


def estimation_grid(campaign) -> np.ndarray:
    """The CV points (G, k): centres of ``ccg.estimate.grid_points`` equal bins per CV over the CV
    domain (the analysis domain; with grid_points = analysis.bins, the fes.csv bin centres)."""
    from cgflow.analysis.campaign import cv_domain

    lower, upper, _ = cv_domain(campaign)
    axes = []
    for lo, hi, n in zip(lower, upper, campaign.ccg.grid_points):
        edges = np.linspace(lo, hi, n + 1)
        axes.append(0.5 * (edges[1:] + edges[:-1]))
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=-1)


def build_energy(campaign):
    """The torch energy U(s, y) of the campaign's toy (ToyEnergy)."""
    from cgflow.reconstruction.energy import ToyEnergy

    if not campaign.system.is_toy:
        raise NotImplementedError("cycle coarse graining is implemented for toy systems only")
    return ToyEnergy(campaign.system.build(), campaign.sampling.kT)


def new_flow(campaign, energy):
    """An untrained flow whose standardisation comes from the box (y) and the CV domain (s)."""
    import torch

    from cgflow.analysis.campaign import cv_domain
    from cgflow.reconstruction.flow import ConditionalFlow

    g, c = energy.geometry, campaign.ccg
    y_lo, y_hi = g.hidden_range()
    s_lo, s_hi, _ = (np.asarray(v, dtype=float) for v in cv_domain(campaign))
    torch.manual_seed(campaign.seed)
    return ConditionalFlow(g.n_hidden, g.n_cvs, transforms=c.transforms, hidden=c.hidden, bins=c.bins,
                           y_loc=(y_lo + y_hi) / 2, y_scale=(y_hi - y_lo) / 4,
                           s_loc=(s_lo + s_hi) / 2, s_scale=(s_hi - s_lo) / np.sqrt(12))


def fg_pairs(campaign, geometry, samples: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """(s, y) of every FG frame of ``samples`` (all rounds). A bias acts on s only, so p(y|s) of
    biased frames is still the unbiased conditional: no reweighting is needed for either use."""
    from cgflow.analysis.campaign import read_samples

    frames, _ = read_samples(samples)
    r = frames[[f"{c}_nm" for c in geometry.coordinates]].to_numpy(dtype=float)
    s, y = geometry.split(r)
    return s, y


def _provenance(campaign, **extra) -> dict:
    from cgflow.io import package_versions

    return {"config_hash": campaign.hash, "stage_hash": campaign.stage_hash("ccg"), "seed": campaign.seed,
            "versions": package_versions(), **extra}


def write_flow(campaign, out_dir: Path, samples: list[Path] | None = None) -> dict:
    """Train the reconstruction flow; write flow.pt, flow.json and train.json into ``out_dir``."""
    import torch

    from cgflow.analysis.campaign import cv_domain
    from cgflow.reconstruction.flow import save_flow
    from cgflow.reconstruction.training import Conditioning, TrainSettings, train

    torch.set_num_threads(1)
    c = campaign.ccg
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    energy = build_energy(campaign)
    flow = new_flow(campaign, energy)
    pairs = fg_pairs(campaign, energy.geometry, samples) if c.needs_fg_samples else None
    if c.conditioning == "samples":
        conditioning = Conditioning.from_samples(pairs[0])
    else:
        lower, upper, _ = cv_domain(campaign)
        conditioning = Conditioning.uniform(lower, upper)
    settings = TrainSettings(steps=c.steps, batch=c.batch, lr=c.lr, nll_weight=c.nll_weight,
                             checkpoint_interval=c.checkpoint_interval,
                             log_interval=max(1, min(100, c.steps // 20)), seed=campaign.seed + 1)
    log.info("training q(y|s): %d generated coordinate(s) given %s; %d steps x %d, conditioning %s",
             energy.n_hidden, ", ".join(campaign.system.cv_names), c.steps, c.batch, conditioning.kind)
    result = train(flow, energy, conditioning, settings, campaign.sampling.kT,
                   nll_data=pairs if c.nll_weight > 0 else None, checkpoint=out_dir / "flow.checkpoint.pt",
                   signature_extra={"stage_hash": campaign.stage_hash("ccg")})
    cost = {"energy_evaluations": result["energy_evaluations"], "wall_s": result["wall_s"], "steps": c.steps,
            "fg_frames_used": 0 if pairs is None else int(len(pairs[0])), "resumed_at_step": result["resumed_at"]}
    meta = {"system": "toy", "temperature_K": campaign.sampling.temperature, "kT_kJmol": campaign.sampling.kT,
            "geometry": energy.geometry.to_json(), "conditioning": conditioning.kind, "training": cost,
            "provenance": _provenance(campaign)}
    save_flow(flow, out_dir / "flow.pt", out_dir / "flow.json", meta)
    write_json(out_dir / "train.json", {"history": result["history"], **cost})
    log.info("flow trained in %.1f s with %d energy evaluations", result["wall_s"], result["energy_evaluations"])
    return meta


def write_ccg_fes(campaign, flow_pt: Path, flow_json: Path, out_dir: Path) -> dict:
    """Estimate F on the grid from the flow; write ccg_fes.csv, diagnostics.csv, ccg_fes.png, summary.json."""
    import torch

    from cgflow.io import write_text
    from cgflow.reconstruction.energy import exact_pmf
    from cgflow.reconstruction.flow import load_flow
    from cgflow.reconstruction.free_energy import EstimateSettings, ccg_free_energy, compare_to_exact
    from cgflow.reconstruction.plots import plot_ccg_fes

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    c, kT = campaign.ccg, campaign.sampling.kT
    out_dir = Path(out_dir)
    flow, info = load_flow(flow_pt, flow_json)
    energy = build_energy(campaign)
    if info.get("geometry") != energy.geometry.to_json():
        raise ValueError(f"{flow_json} was trained for another system or CV; rerun cgflow reconstruct")
    names = list(campaign.system.cv_names)
    grid = estimation_grid(campaign)
    settings = EstimateSettings(samples_per_point=c.samples_per_point, min_ess_fraction=c.min_ess_fraction,
                                min_ess=c.min_ess, max_pareto_k=c.max_pareto_k, bootstrap=c.bootstrap,
                                seed=campaign.seed + 2)
    frame = ccg_free_energy(flow, energy, grid, kT, settings, names)
    estimate_wall = time.perf_counter() - t0
    cutoff = campaign.analysis.rmse_cutoff_kT
    comparison = None
    if energy.n_hidden <= 2:
        frame["F_exact_kJmol"] = exact_pmf(energy.toy, grid, kT)
        comparison = compare_to_exact(frame, frame["F_exact_kJmol"].to_numpy(), kT, cutoff)
    fes_columns = [col for col in frame.columns if col not in ("samples", "outside_fraction", "pareto_k")]
    write_text(out_dir / "ccg_fes.csv", frame[fes_columns].to_csv(index=False, float_format="%.6g"))
    diag_columns = names + ["ess", "ess_fraction", "pareto_k", "trusted", "samples", "outside_fraction", "F_err_kJmol"]
    write_text(out_dir / "diagnostics.csv", frame[diag_columns].to_csv(index=False, float_format="%.6g"))
    plot_ccg_fes(frame, names, out_dir / "ccg_fes.png", kT, c.min_ess_fraction, cutoff,
                 title=f"{campaign.name}: CCG free energy ({int((~frame.trusted).sum())} untrusted points)")
    untrusted = frame.loc[~frame.trusted, names]
    training = info.get("training", {})
    summary = {
        "grid_points": len(frame),
        "samples_per_point": c.samples_per_point,
        "n_untrusted": int((~frame.trusted).sum()),
        "untrusted_points": untrusted.to_dict(orient="records"),
        "ess_fraction_min": float(frame.ess_fraction.min()),
        "ess_fraction_median": float(frame.ess_fraction.median()),
        "min_ess_fraction": c.min_ess_fraction,
        "min_ess": c.min_ess,
        "max_pareto_k": c.max_pareto_k,
        "pareto_k_max": float(frame.pareto_k.max()),
        "vs_exact": comparison,
        "rmse_vs_exact_kT": None if comparison is None else comparison["rmse_kT"],
        "max_abs_error_vs_exact_kT": None if comparison is None else comparison["max_abs_error_kT"],
        "energy_evaluations_training": training.get("energy_evaluations"),
        "energy_evaluations_estimate": energy.evaluations,
        "energy_evaluations_total": (training.get("energy_evaluations") or 0) + energy.evaluations,
        "fg_md_steps": 0,
        "fg_frames_used": training.get("fg_frames_used", 0),
        "training_wall_s": training.get("wall_s"),
        "estimate_wall_s": estimate_wall,
        "provenance": _provenance(campaign, flow=info.get("provenance")),
    }
    write_json(out_dir / "summary.json", summary)
    if comparison is not None:
        log.info("CCG vs exact: RMSE %.3f kT, max |dF| %.3f kT over %d trusted points (F < %g kT); %d untrusted",
                 comparison["rmse_kT"], comparison["max_abs_error_kT"], comparison["n_compared"], cutoff,
                 summary["n_untrusted"])
    return summary
