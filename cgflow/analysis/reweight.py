"""Unbiased weights for the samples of all rounds, by MBAR over the rounds' biases.

Round k samples exp(-(U + V_k)/kT), a thermodynamic state that differs from the others by
its bias only, so the reduced potentials MBAR needs are u_k(s_n) = V_k(s_n)/kT (the FG
potential cancels). The unbiased weight of frame n is 1 / sum_k N_k exp(f_k - u_k(s_n)).
pymbar solves for the f_k; a solution that is not self-consistent stops the job.


The campaign default is TRAM (cgflow.analysis.tram), which does not need each round to be in
equilibrium; ``guidance.estimator: mbar`` uses this module alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

log = logging.getLogger(__name__)


class NotConverged(RuntimeError):
    """An estimator's self-consistent equations (MBAR, TRAM) did not converge."""


@dataclass(frozen=True)
class Reweighting:
    """Normalised unbiased weights per frame, and per-round diagnostics."""

    weights: np.ndarray  # (n,), sum 1
    f_k: np.ndarray  # dimensionless free energies of the rounds' biased states, f_0 = 0
    n_k: np.ndarray  # frames per round
    ess: float  # Kish effective sample size of all weights
    ess_per_round: np.ndarray  # Kish ESS of each round's share of the weights
    overlap: float | None  # MBAR overlap scalar (second-largest eigenvalue gap), None for one state
    connected: np.ndarray | None = None  # (n,) bool: inside TRAM's connected set (None: MBAR, all frames)


def kish(w: np.ndarray) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2."""
    s = w.sum()
    return float(s * s / np.dot(w, w)) if s > 0 else 0.0


def _import_pymbar():
    """pymbar, without the banners it logs on import (no JAX, timeseries caveat) and its
    per-solve INFO chatter, which would fill every job log; its real warnings still show."""
    pymbar_log = logging.getLogger("pymbar")
    pymbar_log.setLevel(logging.ERROR)
    import pymbar

    pymbar_log.setLevel(logging.WARNING)
    return pymbar


def mbar_weights(cv: np.ndarray, rounds: np.ndarray, biases: list, kT: float, tolerance: float = 1e-6) -> Reweighting:
    """``biases[k]`` is the bias (a callable on CV values, kJ/mol, or None) that round k sampled."""
    rounds = np.asarray(rounds)
    states = np.arange(len(biases))
    n_k = np.array([np.sum(rounds == k) for k in states])
    if n_k.sum() != len(cv):
        raise ValueError("every frame must belong to one of the rounds given")
    u_kn = np.stack([np.zeros(len(cv)) if b is None else b(cv) / kT for b in biases])
    if not np.isfinite(u_kn).all():
        raise ValueError("a bias is not finite at some sampled CV value")
    sampled = n_k > 0
    overlap = None
    if np.ptp(u_kn, axis=0).max() == 0:
        f_k = np.zeros(len(biases))
    else:
        pymbar = _import_pymbar()
        mbar = pymbar.MBAR(u_kn[sampled], n_k[sampled], solver_protocol="robust")
        f_k = np.full(len(biases), np.nan)
        f_k[sampled] = mbar.f_k
        overlap = float(mbar.compute_overlap()["scalar"])
    log_w = -logsumexp(f_k[sampled, None] - u_kn[sampled] + np.log(n_k[sampled, None]), axis=0)
    log_w -= logsumexp(log_w)
    check = -logsumexp(log_w[None, :] - u_kn[sampled], axis=1)
    check -= check[0]
    if not np.allclose(check, f_k[sampled] - f_k[sampled][0], atol=tolerance, rtol=0):
        raise NotConverged(
            "MBAR did not converge: the round free energies are not self-consistent "
            f"(max error {np.max(np.abs(check - f_k[sampled] + f_k[sampled][0])):.2e} kT); "
            "the rounds may not overlap - check the bias and the per-round ESS"
        )
    w = np.exp(log_w)
    ess_round = np.array([kish(w[rounds == k]) for k in states])
    result = Reweighting(w, f_k - f_k[sampled][0], n_k, kish(w), ess_round, overlap)
    log.info("MBAR over %d rounds: f_k = %s kT, ESS %.0f of %d frames, overlap %s",
             len(biases), np.round(result.f_k, 3), result.ess, len(w), overlap)
    return result


def campaign_weights(campaign, frames, biases: list) -> Reweighting:
    """Unbiased weights of ``frames`` (round 0..K-1, walker, step, CVs) by the campaign's
    estimator (guidance.estimator); ``biases[k]`` is what round k sampled under: a bias, None,
    or the :class:`~cgflow.sampling.hills.RoundStates` of a round with hills, whose deposition
    intervals are states of their own (``f_k`` is then per state, the other diagnostics per
    round). One state alone is its frames reweighted by exp(+V/kT), by MBAR: TRAM would need
    transitions a part-round may be too short for."""
    from cgflow.sampling.hills import RoundStates

    if not any(isinstance(b, RoundStates) for b in biases):
        return _state_weights(campaign, frames, biases)
    state, state_biases = thermodynamic_states(frames, biases)
    rw = _state_weights(campaign, frames.assign(round=state), state_biases)
    rounds = frames["round"].to_numpy()
    n_k = np.bincount(rounds, minlength=len(biases))
    ess_round = np.array([kish(rw.weights[rounds == k]) for k in range(len(biases))])
    return Reweighting(rw.weights, rw.f_k, n_k, rw.ess, ess_round, rw.overlap, rw.connected)


def thermodynamic_states(frames, biases: list) -> tuple[np.ndarray, list]:
    """Each frame's thermodynamic state and each state's bias: one state per round, or per
    deposition interval of a round with hills (intervals without frames left out)."""
    from cgflow.sampling.hills import RoundStates

    rounds, steps = frames["round"].to_numpy(), frames["step"].to_numpy()
    state, state_biases = np.empty(len(frames), dtype=np.int64), []
    for k, bias in enumerate(biases):
        mine = rounds == k
        if isinstance(bias, RoundStates):
            interval = bias.interval_of(steps[mine])
            used, index = np.unique(interval, return_inverse=True)
            state[mine] = len(state_biases) + index
            state_biases += [bias.grids[j] for j in used]
        else:
            state[mine] = len(state_biases)
            state_biases.append(bias)
    return state, state_biases


def _state_weights(campaign, frames, biases: list) -> Reweighting:
    names = list(campaign.system.cv_names)
    g, kT = campaign.guidance, campaign.sampling.kT
    if g.estimator == "tram" and len(biases) > 1:
        from cgflow.analysis.campaign import cv_domain
        from cgflow.analysis.tram import tram_weights

        lower, upper, _ = cv_domain(campaign)
        frame_ps = campaign.sampling.report_interval * campaign.sampling.timestep
        lag = max(1, round(g.markov_lag / frame_ps))
        return tram_weights(frames, names, biases, kT, lower, upper, g.markov_bins, lagtime=lag)
    return mbar_weights(frames[names].to_numpy(), frames["round"].to_numpy(), biases, kT)


def write_weights(campaign, sample_paths, bias_paths, out, previous=None) -> Reweighting:
    """Unbiased weights (TRAM or MBAR) of every frame of the given rounds -> parquet (round, walker, step, weight,
    connected: inside TRAM's connected set) with the per-round diagnostics in its metadata. ``bias_paths[k]`` is round k's bias or None.
    The metadata's ``levelled_cells`` are the cells the guidance levels (``policy.remembered_cells``),
    remembered from ``previous`` (the rounds before's weights.parquet) for ``guidance.level_memory`` rounds."""
    from cgflow.analysis.campaign import read_samples
    from cgflow.guidance.bias import BiasGrid
    from cgflow.io import InputError, package_versions, write_parquet
    from cgflow.sampling.hills import RoundStates

    if len(bias_paths) != len(sample_paths):
        raise InputError(f"{len(sample_paths)} samples files but {len(bias_paths)} biases: give each round's bias "
                         "(or none), in the same order")
    df, provenance = read_samples(campaign, sample_paths)
    for path, p, b in zip(sample_paths, provenance, bias_paths):
        if not p.get("hills") and bool(p.get("bias")) != (b is not None):
            raise InputError(f"{path} was sampled {'under ' + p['bias'] if p.get('bias') else 'without a bias'}, "
                             f"but its bias is given as {b or 'none'}")
    biases = [RoundStates.load(p["hills"]) if p.get("hills") else BiasGrid.load(b) if b else None
              for p, b in zip(provenance, bias_paths)]
    rw = campaign_weights(campaign, df, biases)
    connected = rw.connected if rw.connected is not None else np.ones(len(df), dtype=bool)
    table = df[["round", "walker", "step"]].assign(weight=rw.weights, connected=connected)
    write_parquet(table, out, {
        "levelled_cells": _levelled_cells(campaign, df, connected, previous),
        "sampling_hash": campaign.stage_hash("sampling"),
        "config_hash": campaign.hash,
        "versions": package_versions(),
        "estimator": campaign.guidance.estimator,
        "f_k": rw.f_k.tolist(), "n_k": rw.n_k.tolist(), "ess": rw.ess,
        "ess_per_round": rw.ess_per_round.tolist(), "overlap": rw.overlap,
        "biases": [str(p) if p else None for p in bias_paths],
    })
    return rw


def _levelled_cells(campaign, frames, connected, previous) -> dict[str, int]:
    """``policy.remembered_cells`` of these frames (JSON keys: cell indices as strings)."""
    from cgflow.analysis.campaign import cv_domain, read_provenance_of
    from cgflow.guidance.policy import remembered_cells
    from cgflow.io import InputError

    earlier = {}
    if previous is not None:
        p = read_provenance_of(previous, "weights.parquet")
        if p.get("config_hash") != campaign.hash:
            raise InputError(f"{previous} holds the weights of another campaign (other config): it cannot be the "
                             "previous round's")
        earlier = {int(cell): last for cell, last in p.get("levelled_cells", {}).items()}
    lower, upper, _ = cv_domain(campaign)
    g = campaign.guidance
    kept = remembered_cells(frames[list(campaign.system.cv_names)].to_numpy(), connected, lower, upper, g.min_frames,
                            int(frames["round"].max()), g.level_memory, earlier)
    return {str(cell): last for cell, last in sorted(kept.items())}


def attach_weights(campaign, samples, weights_path):
    """``samples`` (with a round column) joined with the weights of ``weights_path``, which must
    be this campaign's."""
    import pandas as pd

    from cgflow.analysis.campaign import read_provenance_of
    from cgflow.io import InputError

    p, expected = read_provenance_of(weights_path, "weights.parquet"), campaign.stage_hash("sampling")
    if p.get("sampling_hash", expected) != expected:
        raise InputError(f"{weights_path} holds the weights of another campaign's samples (other seed, system or "
                         "sampling keys)")
    weights = pd.read_parquet(weights_path)
    merged = samples.merge(weights, on=["round", "walker", "step"], how="left", validate="one_to_one")
    if merged["weight"].isna().any():
        raise ValueError(f"{weights_path} has no weight for some frames: it belongs to other samples")
    return merged
