"""Unbiased weights of all rounds' frames by TRAM (deeptime), the default reweighting.

MBAR treats each round as an equilibrium sample of its biased state. CG-guided rounds break
that whenever a bias moves the equilibrium faster than the walkers can follow - typically when
a round discovers a basin deeper than the region its bias has filled: the walkers pour into it
all round, and MBAR turns that transient into free-energy errors of many kT. TRAM (Wu, Paul,
Wehmeyer and Noé, PNAS 2016) needs only local equilibrium within each Markov state (here a cell
of a regular CV grid) and takes the global balance from the transitions the walkers made, so it
stays right where MBAR fails, and equals MBAR when every round is in equilibrium.
"""

from __future__ import annotations

import logging

import numpy as np

from cgflow.analysis.reweight import Reweighting, kish

log = logging.getLogger(__name__)


def markov_states(cv: np.ndarray, lower, upper, bins: int) -> np.ndarray:
    """Index of each frame's cell on a ``bins``-per-CV grid over the CV domain (C order)."""
    cv = np.atleast_2d(cv)
    index = np.zeros(len(cv), dtype=np.int64)
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        cell = np.clip(((cv[:, i] - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        index = index * bins + cell
    return index


def tram_weights(frames, cv_names, biases: list, kT: float, lower, upper, bins: int,
                 maxiter: int = 50000, maxerr: float = 1e-7) -> Reweighting:
    """TRAM weights of ``frames`` (columns round, walker, step and the CVs; any order).

    ``biases[k]`` is the bias (callable on CV values, kJ/mol, or None) round k sampled. Each
    walker's frames of one round form a trajectory in round k's thermodynamic state; the lag
    is one saved frame. Frames outside TRAM's largest connected set get weight 0. Raises when
    the self-consistent iteration does not converge.
    """
    from deeptime.markov import TransitionCountEstimator
    from threadpoolctl import threadpool_limits
    from deeptime.markov.msm import TRAM, TRAMDataset

    order = np.lexsort((frames["step"].to_numpy(), frames["walker"].to_numpy(), frames["round"].to_numpy()))
    cv = frames[list(cv_names)].to_numpy()[order]
    rounds = frames["round"].to_numpy()[order]
    walkers = frames["walker"].to_numpy()[order]
    n_states = len(biases)
    u = np.stack([np.zeros(len(cv)) if b is None else b(cv) / kT for b in biases], axis=1)
    states = markov_states(cv, lower, upper, bins)
    # compact state indices: TRAM's arrays are n_markov_states wide
    used, dstates = np.unique(states, return_inverse=True)
    cut = np.flatnonzero((np.diff(rounds) != 0) | (np.diff(walkers) != 0)) + 1
    pieces = lambda a: np.split(a, cut)  # noqa: E731
    dtrajs = [p.astype(np.int32) for p in pieces(dstates)]
    ttrajs = [p.astype(np.int32) for p in pieces(rounds)]
    make = lambda d: TRAMDataset(dtrajs=d, bias_matrices=pieces(u), ttrajs=ttrajs,  # noqa: E731
                                 n_therm_states=n_states, n_markov_states=len(used), lagtime=1)
    # the connected set of the transitions of all rounds together: the biases are functions of the
    # CVs alone, nearly constant within a cell, so rounds visiting the same cell overlap there
    # (deeptime's post_hoc_RE check assumes one trajectory per thermodynamic state)
    keep = TransitionCountEstimator(lagtime=1, count_mode="sliding").fit_fetch(dtrajs).submodel_largest(
        directed=True).state_symbols
    dataset = make([np.where(np.isin(d, keep), d, -1).astype(np.int32) for d in dtrajs])
    estimator = TRAM(lagtime=1, maxiter=maxiter, maxerr=maxerr, callback_interval=50)
    # one OpenMP thread: deeptime's threads on a pinned or shared core are many times slower
    with threadpool_limits(limits=1):
        model = estimator.fit_fetch(dataset)
    increment = estimator.energy_increments[-1] if estimator.energy_increments else np.inf
    if not np.isfinite(model.therm_state_energies).all() or increment > 10 * maxerr:
        raise RuntimeError(f"TRAM did not converge in {maxiter} iterations (last free-energy change "
                           f"{increment:.2e} kT); the rounds may not be connected - check the per-round ESS")
    log_w = np.concatenate(model.compute_sample_weights_log(dataset.dtrajs, dataset.bias_matrices))
    connected = np.concatenate(dataset.dtrajs) >= 0
    w_sorted = np.where(connected, np.exp(log_w - log_w[connected].max()), 0.0)
    w_sorted /= w_sorted.sum()
    weights = np.empty_like(w_sorted)
    weights[order] = w_sorted
    f_k = np.asarray(model.therm_state_energies, dtype=float)
    n_k = np.array([np.sum(rounds == k) for k in range(n_states)])
    ess_round = np.array([kish(w_sorted[rounds == k]) for k in range(n_states)])
    result = Reweighting(weights, f_k - f_k[0], n_k, kish(weights), ess_round, None)
    log.info("TRAM over %d rounds, %d Markov states: f_k = %s kT, ESS %.0f of %d frames (%d outside the "
             "connected set)", n_states, len(used), np.round(result.f_k, 3), result.ess, len(weights),
             int((~connected).sum()))
    return result
