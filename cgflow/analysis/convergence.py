"""Convergence curves: FES error against the reference as a function of FG steps spent.

cgflow and its peers (METHODS.md, reference systems) get the same FG budget B = (N+1) * walkers
* (steps + equilibration) and the same walkers; each is scored at the same budget points, j/J
of B for j = 1..J, J = (N+1) * analysis.budget_points (:func:`budget_schedule`). At a budget
point each method's FES is the one it could report had it stopped there:

- cgflow: the full rounds before the current one and, of the current round, each walker's
  frames up to its share of the budget, reweighted (guidance.estimator) over the rounds included (round k's
  bias is the bias path in its samples' provenance; None means unbiased);
- unbiased MD: each walker's frames up to its share of the budget;
- metadynamics: its free-energy snapshot at that budget (from the bias, not from histograms;
  integrated over each bin, as the histograms and the exact PMF are).

The score is :func:`cgflow.analysis.fes.compare_to_reference` (RMSE in kT over the bins where
the reference is below ``analysis.rmse_cutoff_kT``; unvisited bins count at the detection
limit). ``coverage`` is the fraction of those bins the method's walkers visited.

Beside cgflow's curve, each biased round's bias error (:func:`bias_error_kT`): how far the bias
the round sampled under is from the well-tempered bias the reference asks for. An FES error says
that the rounds are off; the bias error says whether the cause is the bias the walkers felt. And
each round's on-target share (:func:`on_target_shares`): how many of its frames landed where the
FES is scored; a curve that stalls while the share falls spends its FG steps elsewhere.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from cgflow.io import atomic_path

log = logging.getLogger(__name__)

COLUMNS = ["method", "fg_steps", "rmse_kT", "coverage"]
TOY_TARGET_KT = 0.5
MOLECULE_TARGET_KJMOL = 1.0


def budget_schedule(campaign) -> np.ndarray:
    """Per-walker FG steps at the budget points, j * (N+1)*(steps+equilibration) // J for
    j = 1..J, J = (N+1) * budget_points: increasing, each round's end among them, the last the
    whole per-walker budget (points less than a step apart merge, so there may be fewer than J).
    Total FG steps are ``walkers`` times these."""
    s = campaign.sampling
    n_rounds = campaign.guidance.rounds + 1
    n_points = n_rounds * campaign.analysis.budget_points
    steps = np.arange(1, n_points + 1, dtype=np.int64) * (n_rounds * (s.steps + s.equilibration)) // n_points
    return np.unique(steps[steps > 0])


def target_kT(campaign) -> float:
    """The RMSE a method must reach: 0.5 kT for toys, 1 kJ/mol for molecules."""
    return TOY_TARGET_KT if campaign.system.is_toy else MOLECULE_TARGET_KJMOL / campaign.sampling.kT


def _score(campaign, cv: np.ndarray, reference_F, weights=None) -> tuple[float, float]:
    """(rmse_kT, coverage) of the histogram FES of ``cv``; (NaN, 0) with no samples yet."""
    from cgflow.analysis.campaign import cv_edges
    from cgflow.analysis.fes import compare_to_reference, histogram_fes

    kT = campaign.sampling.kT
    if len(cv) == 0:
        return math.nan, 0.0
    # only F and its detection limit are used: the fewest bootstrap replicas allowed
    fes = histogram_fes(cv, cv_edges(campaign), kT, weights=weights, n_bootstrap=2, seed=campaign.seed)
    score = compare_to_reference(fes, reference_F, kT, campaign.analysis.rmse_cutoff_kT)
    return score["rmse_kT"], score["coverage"]


def _curve(method: str, rows: list[tuple[int, float, float]]):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=COLUMNS[1:])
    frame.insert(0, "method", method)
    return frame.astype({"fg_steps": "int64", "rmse_kT": float, "coverage": float})


def curve_rounds(campaign, sample_paths, reference_F, weight_paths=()):
    """cgflow's curve from its rounds' samples.parquet files; it stops at the last budget point
    the given rounds cover (rounds are recognised by the 'round' of their provenance). At the end
    of round k the weights are round k's ``weight_paths[k]`` where given (the reweight rule's
    weights.parquet, the same frames and estimator: the curve then refits only part-rounds, which
    halves its TRAM fits at two budget points per round). A budget point inside a round whose
    reweighting does not converge gets no RMSE (NaN, with a warning): the curve is a diagnostic,
    and the part-round it reweights is no round's result; a whole round's weights are the reweight
    rule's, which fails loudly instead."""
    from cgflow.analysis.campaign import read_samples
    from cgflow.analysis.reweight import NotConverged, campaign_weights

    s = campaign.sampling
    names = list(campaign.system.cv_names)
    df, prov = read_samples(campaign, [Path(p) for p in sample_paths])
    loaded = _round_biases(prov)
    per_round = s.steps + s.equilibration
    rows = []
    for t in budget_schedule(campaign):
        current = int((t - 1) // per_round)
        if any(k not in loaded for k in range(current + 1)):
            break
        share = int(t - current * per_round) - s.equilibration
        take = (df["round"] < current) | ((df["round"] == current) & (df["step"] <= share))
        part = df[take]
        cv, weights = part[names].to_numpy(), None
        if share == s.steps and current < len(weight_paths):
            weights = _round_weights(campaign, part, weight_paths[current])
        elif len(part):
            included = sorted(part["round"].unique())
            frames = part.assign(round=part["round"].map({k: i for i, k in enumerate(included)}))
            try:
                weights = campaign_weights(campaign, frames, [loaded[k] for k in included]).weights
            except NotConverged as error:
                if share == s.steps:
                    raise
                log.warning("convergence curve: no RMSE at %d FG steps (round %d cut at step %d): %s",
                            int(t) * s.walkers, current, share, error)
                rows.append((int(t) * s.walkers, math.nan, _score(campaign, cv, reference_F)[1]))
                continue
        rows.append((int(t) * s.walkers, *_score(campaign, cv, reference_F, weights)))
    return _curve("cgflow", rows)


def _round_weights(campaign, frames, path) -> np.ndarray:
    """The weights ``path`` (one round's weights.parquet) gives ``frames``, which must be all of
    its frames: those of rounds 0..k."""
    from pyarrow.parquet import read_metadata

    from cgflow.analysis.reweight import attach_weights

    rows = read_metadata(path).num_rows
    if rows != len(frames):
        raise ValueError(f"{path} weighs {rows} frames, but rounds 0..{frames['round'].max()} of the samples "
                         f"have {len(frames)}: it belongs to other samples")
    return attach_weights(campaign, frames, path)["weight"].to_numpy()


def curve_unbiased(campaign, path, reference_F):
    """The unbiased peer's curve: at per-walker budget t, each walker's frames with production
    step <= t - equilibration (the run equilibrates once, then samples)."""
    import pandas as pd

    s = campaign.sampling
    names = list(campaign.system.cv_names)
    df = pd.read_parquet(path, columns=["step", *names])
    rows = []
    for t in budget_schedule(campaign):
        part = df[df["step"] <= t - s.equilibration]
        rows.append((int(t) * s.walkers, *_score(campaign, part[names].to_numpy(), reference_F)))
    return _curve("unbiased", rows)


def curve_metadynamics(campaign, snapshots_path, reference_F):
    """The metadynamics peer's curve from its free-energy snapshots; coverage is the fraction of
    the reference's bins below the cutoff that the walkers' saved frames had visited by then."""
    from cgflow.analysis.campaign import cv_edges
    from cgflow.analysis.fes import FES, compare_to_reference
    from cgflow.sampling.metadynamics import read_snapshots

    kT, cutoff = campaign.sampling.kT, campaign.analysis.rmse_cutoff_kT
    snap = read_snapshots(snapshots_path)
    if any(len(a) != len(b) or not np.allclose(a, b) for a, b in zip(snap["edges"], cv_edges(campaign))):
        raise ValueError(f"{snapshots_path} is on other bins than analysis.bins gives; rerun the metadynamics peer")
    region = scored_region(campaign, reference_F)
    rows = []
    for budget, F, counts in zip(snap["budget_steps"], snap["F"], snap["counts"]):
        fes = FES(edges=tuple(snap["edges"]), F=F, F_err=np.full_like(F, np.nan))
        rmse = compare_to_reference(fes, reference_F, kT, cutoff)["rmse_kT"]
        rows.append((int(budget), rmse, float(np.sum(region & (counts > 0)) / region.sum())))
    return _curve("metadynamics", rows)


def scored_region(campaign, reference_F) -> np.ndarray:
    """The reference's bins below ``analysis.rmse_cutoff_kT``, where every score is taken."""
    F_ref = np.asarray(getattr(reference_F, "F", reference_F), dtype=float)
    return F_ref - np.nanmin(F_ref) < campaign.analysis.rmse_cutoff_kT * campaign.sampling.kT


def bias_error_kT(campaign, bias, reference_F) -> float:
    """RMS (kT) of ``bias`` minus the well-tempered bias -(1 - 1/gamma) F_ref, less their mean
    difference, at the centres of the reference's bins below ``analysis.rmse_cutoff_kT``: the
    error of the landscape the walkers felt, F_ref + bias, against the well-tempered F_ref / gamma."""
    from cgflow.analysis.campaign import cv_edges

    kT = campaign.sampling.kT
    F_ref = np.asarray(getattr(reference_F, "F", reference_F), dtype=float)
    F_ref = F_ref - np.nanmin(F_ref)
    region = scored_region(campaign, F_ref)
    mesh = np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in cv_edges(campaign)], indexing="ij")
    centres = np.stack([m[region] for m in mesh], axis=-1)
    diff = bias(centres) + (1 - 1 / campaign.guidance.gamma) * F_ref[region]
    return float(np.sqrt(np.mean((diff - diff.mean()) ** 2)) / kT)


def bias_errors(campaign, sample_paths, reference_F) -> list[list]:
    """[[round, :func:`bias_error_kT`], ...] for each biased round of ``sample_paths``; for a
    round with hills, of the bias at its end (the CG bias plus all its hills)."""
    from cgflow.io import read_provenance
    from cgflow.sampling.hills import RoundStates

    biases = _round_biases([read_provenance(p) for p in sample_paths])
    return [[k, bias_error_kT(campaign, bias.grids[-1] if isinstance(bias, RoundStates) else bias, reference_F)]
            for k, bias in biases.items() if bias is not None]


def on_target_shares(campaign, sample_paths, reference_F) -> list[list]:
    """[[round, share], ...]: the fraction of each round's frames in the reference's bins below
    ``analysis.rmse_cutoff_kT``, where the FES is scored. The rest of the round's FG steps went
    where the score does not look: barriers and high free energies, which a bias must visit to
    find basins and which it overvisits when it overfills."""
    from cgflow.analysis.campaign import cv_edges, read_samples

    names = list(campaign.system.cv_names)
    region = scored_region(campaign, reference_F)
    shares = []
    for k, frames in read_samples(campaign, sample_paths)[0].groupby("round", sort=True):
        counts, _ = np.histogramdd(frames[names].to_numpy(), bins=cv_edges(campaign))
        shares.append([int(k), float(counts[region].sum() / max(counts.sum(), 1))])
    return shares


def _round_biases(provenance: list[dict]) -> dict:
    """Round -> the BiasGrid it sampled under (None: unbiased; with hills, the RoundStates of
    its deposition intervals), from its samples' provenance."""
    from cgflow.guidance.bias import BiasGrid
    from cgflow.sampling.hills import RoundStates

    return {int(p["round"]): RoundStates.load(p["hills"]) if p.get("hills") else
            BiasGrid.load(p["bias"]) if p.get("bias") else None for p in provenance}


def steps_to_target(curve, target_kT: float) -> int | None:
    """FG steps at the first budget point where rmse_kT <= target_kT; None if it never gets there."""
    hit = curve.sort_values("fg_steps")
    hit = hit[hit["rmse_kT"] <= target_kT]
    return int(hit["fg_steps"].iloc[0]) if len(hit) else None


def steps_to_stay(curve, target_kT: float) -> int | None:
    """FG steps of the first budget point from which rmse_kT stays <= target_kT to the end of the
    budget (points without an estimate break the run); None if the last point is above it. A
    first hit can be luck between noisy points; this is when the estimate can be trusted."""
    curve = curve.sort_values("fg_steps")
    ok = (curve["rmse_kT"] <= target_kT).to_numpy()
    if not len(ok) or not ok[-1]:
        return None
    above = np.flatnonzero(~ok)
    return int(curve["fg_steps"].iloc[above[-1] + 1 if len(above) else 0])


PEER_FILES = {"unbiased": "samples.parquet", "metadynamics": "fes_snapshots.npz"}


def write_convergence(campaign, sample_paths, peer_paths: dict, reference_csv, out_csv, plot_png,
                      weight_paths=()) -> dict:
    """Curves of cgflow (``sample_paths``, its rounds, with their ``weight_paths``: see
    :func:`curve_rounds`) and of the peers (``peer_paths``: method ->
    the peer's out_dir or file) against the reference fes.csv; write ``out_csv`` (one row per
    method and budget point) and ``plot_png``; return the summary: per method its curve
    ([[fg_steps, rmse_kT], ...], None for a budget with no estimate), steps_to_target and
    steps_to_stay, cgflow's bias_error_kT ([[round, kT], ...]) and on_target_share ([[round, fraction
    of its frames where the FES is scored], ...]), and target_kT."""
    import pandas as pd

    from cgflow.analysis.fes import read_fes_csv

    reference = read_fes_csv(reference_csv, list(campaign.system.cv_names)).F
    curves = [curve_rounds(campaign, sample_paths, reference, weight_paths)] if sample_paths else []
    for method, where in peer_paths.items():
        path = Path(where) / PEER_FILES[method] if Path(where).is_dir() else Path(where)
        make = {"unbiased": curve_unbiased, "metadynamics": curve_metadynamics}[method]
        curves.append(make(campaign, path, reference))
    table = pd.concat(curves, ignore_index=True)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    target = target_kT(campaign)
    _plot(table, target, plot_png, f"{campaign.name}: {campaign.system.potential or campaign.system.type}")
    summary = {"target_kT": target}
    for method, curve in table.groupby("method", sort=False):
        points = zip(curve["fg_steps"], curve["rmse_kT"])
        summary[method] = {"curve": [[int(b), None if math.isnan(r) else float(r)] for b, r in points],
                           "steps_to_target": steps_to_target(curve, target),
                           "steps_to_stay": steps_to_stay(curve, target)}
        log.info("%s: %s FG steps to %.3g kT, below it from %s on", method, summary[method]["steps_to_target"],
                 target, summary[method]["steps_to_stay"])
    if sample_paths:
        summary["cgflow"]["bias_error_kT"] = bias_errors(campaign, sample_paths, reference)
        summary["cgflow"]["on_target_share"] = on_target_shares(campaign, sample_paths, reference)
    return summary


def _plot(table, target: float, path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for method, curve in table.groupby("method", sort=False):
        ax.plot(curve["fg_steps"], curve["rmse_kT"], marker="o", label=method)
    ax.axhline(target, color="k", linestyle="--", linewidth=1, label=f"target {target:.3g} kT")
    ax.set_xscale("log")
    ax.set_xlabel("FG steps")
    ax.set_ylabel("FES RMSE vs reference (kT)")
    ax.set_title(title)
    ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def cli_convergence(args) -> None:
    """``cgflow convergence --config C --samples ... [--weights ...] --peer NAME=DIR ... --reference R
    --out CSV --plot PNG --summary-json J``."""
    from cgflow.config import load_config
    from cgflow.io import write_json

    peers = {}
    for item in args.peer or []:
        name, _, where = item.partition("=")
        if name not in PEER_FILES or not where:
            raise SystemExit(f"cgflow convergence: --peer {item!r} is not allowed; give NAME=DIR with NAME one of "
                             f"{', '.join(PEER_FILES)}")
        peers[name] = Path(where)
    summary = write_convergence(load_config(Path(args.config)), [Path(p) for p in args.samples or []], peers,
                                Path(args.reference), Path(args.out), Path(args.plot),
                                [Path(p) for p in args.weights or []])
    write_json(args.summary_json, summary)
