"""Unbiased weights of all rounds' frames by TRAM (deeptime), the default reweighting.

MBAR treats each round as an equilibrium sample of its biased state. CG-guided rounds break
that whenever a bias moves the equilibrium faster than the walkers can follow - typically when
a round discovers a basin deeper than the region its bias has filled: the walkers pour into it
all round, and MBAR turns that transient into free-energy errors of many kT. TRAM (Wu, Paul,
Wehmeyer and Noé, PNAS 2016) needs only local equilibrium within each Markov state (here a cell
of a regular CV grid) and takes the global balance from the transitions the walkers made, so it
stays right where MBAR fails, and equals MBAR when every round is in equilibrium.

TRAM can place only the frames of its connected set: the Markov states that transitions join both
ways. When a round's walkers cross a barrier one way and stay (A -> B), basin B is outside that
set; giving its frames weight 0 hides B from the CG model, so the next bias never fills B and the
rounds deadlock. Those frames get their MBAR weight instead, from MBAR's equations with the
connected frames held at TRAM's weights (``outside_log_weights``).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from cgflow.analysis.reweight import NotConverged, Reweighting, kish

log = logging.getLogger(__name__)


def markov_states(cv: np.ndarray, lower, upper, bins: int) -> np.ndarray:
    """Index of each frame's cell on a ``bins``-per-CV grid over the CV domain (C order)."""
    cv = np.atleast_2d(cv)
    index = np.zeros(len(cv), dtype=np.int64)
    for i, (lo, hi) in enumerate(zip(lower, upper)):
        cell = np.clip(((cv[:, i] - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        index = index * bins + cell
    return index


GRADIENT_PER_FRAME = 1e-6
"""Largest gradient of the outside-frames objective per frame of a round accepted as converged."""


def outside_log_weights(log_w, connected, u, rounds, n_states: int) -> np.ndarray:
    """Log weights of the frames outside the connected set, on the scale of TRAM's ``log_w``.

    MBAR's equations with the connected frames' weights held at TRAM's: an outside frame weighs
    w(x) = 1 / sum_k N_k exp(f_k - u_k(x)) (N_k all of round k's frames), where exp(-f_k), round
    k's biased mass, is its mass on the connected set by TRAM plus sum over the outside frames of
    w exp(-u_k). No transition returns from the outside, so the link is the rounds' equilibrium
    alone, as in MBAR. The f_k minimise the convex sum_out log sum_k N_k exp(f_k - u_k(x))
    + sum_k N_k C_k exp(f_k) - sum_k N_k f_k (C_k: the connected mass), by Newton's method.
    """
    n_k = np.bincount(rounds, minlength=n_states)
    sampled = n_k > 0
    n_k, u_out = n_k[sampled], u[~connected][:, sampled]
    log_c = logsumexp(log_w[connected, None] - u[connected][:, sampled], axis=0)

    def terms(f):
        log_p = np.log(n_k) + f - u_out
        log_d = logsumexp(log_p, axis=1, keepdims=True)
        return log_d, np.exp(log_p - log_d), n_k * np.exp(f + log_c)

    def objective(f):
        log_d, p, c = terms(f)
        return log_d.sum() + c.sum() - n_k @ f, p.sum(axis=0) + c - n_k

    def hessian(f):
        _, p, c = terms(f)
        return np.diag(p.sum(axis=0) + c) - p.T @ p

    fit = minimize(objective, np.where(np.isfinite(log_c), -log_c, 0.0), jac=True, hess=hessian,
                   method="trust-exact")
    # the optimiser can stop short of its absolute gradient tolerance once rounding in a sum over
    # ~1e5 frames dominates ("a bad approximation..."); a gradient that small against the frame
    # counts moves no f_k by more than ~1e-6 kT
    if not fit.success and np.max(np.abs(fit.jac) / n_k) > GRADIENT_PER_FRAME:
        raise NotConverged(f"the free energies of the frames outside TRAM's connected set did not converge: "
                           f"{fit.message} (largest gradient per frame {np.max(np.abs(fit.jac) / n_k):.2g})")
    return -terms(fit.x)[0][:, 0]


CHUNK = 1000
"""TRAM iterations between convergence checks (and progress lines)."""

ACCEPT_KT = 0.1
"""After ``maxiter`` iterations, f_k this close to their extrapolated limit are used, with a
warning: far below any FES target or bootstrap error, and the decay can be slower than geometric
(0.03 kT left after 100k iterations on a 2-D double-well round that had just crossed)."""


def _converge(TRAM, dataset, maxiter: int, maxerr: float, tolerance_kT: float, lagtime: int = 1):
    """deeptime's TRAM iterated in chunks of CHUNK, each warm-started from the last, until the
    per-iteration free-energy increment is below ``maxerr`` or the round free energies f_k are
    within ``tolerance_kT`` of their limit. That limit is extrapolated from the geometric decay of
    the f_k change per chunk: a basin joined to the rest by a few transitions makes TRAM's
    fixed-point iteration converge linearly and slowly, and a small increment alone then stops
    it far from the solution (an increment of 3e-5 kT at a decay of 1e-4 per iteration is
    0.3 kT away). After ``maxiter`` iterations, accepts f_k within ACCEPT_KT of the limit with a
    warning and raises otherwise."""
    from threadpoolctl import threadpool_limits

    estimator = TRAM(lagtime=lagtime, maxiter=CHUNK, maxerr=maxerr, callback_interval=50)
    model, previous, change, remaining = None, None, np.inf, np.inf
    # one OpenMP thread: deeptime's threads on a pinned or shared core are many times slower
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TRAM did not converge")
        for done in range(CHUNK, maxiter + CHUNK, CHUNK):
            model = estimator.fit_fetch(dataset, model=model)
            f_k = np.asarray(model.therm_state_energies, dtype=float)
            if not np.isfinite(f_k).all():
                remaining = np.inf
                break
            increment = estimator.energy_increments[-1] if estimator.energy_increments else np.inf
            if previous is not None:
                last, change = change, float(np.max(np.abs(f_k - previous)))
                ratio = change / last if np.isfinite(last) and last > 0 else 1.0
                remaining = change * ratio / (1 - ratio) if ratio < 1 else (0.0 if change == 0 else np.inf)
            if increment <= maxerr or remaining <= tolerance_kT:
                return model
            if done % (10 * CHUNK) == 0:
                log.info("TRAM: %d iterations, f_k moved %.2g kT in the last %d, about %.2g kT from the limit",
                         done, change, CHUNK, remaining)
            previous = f_k
    if remaining <= ACCEPT_KT:
        log.warning("TRAM stopped at %d iterations with f_k about %.2g kT from their limit (tolerance %.2g kT)",
                    maxiter, remaining, tolerance_kT)
        return model
    raise NotConverged(f"TRAM did not converge in {maxiter} iterations (f_k still moving {change:.2e} kT per "
                       f"{CHUNK}, about {remaining:.2g} kT from the limit); the rounds may not be connected - "
                       f"check the per-round ESS")


def _counted_dataset(make, dtrajs: list, ttrajs: list):
    """``make(dtrajs)``, with every frame that deeptime's counts leave out of its state set to -1.

    ``keep`` joins Markov states by transitions at the lag over whole walker rounds; deeptime
    counts a round's transitions only within its stretches of frames inside the set, and a round
    whose stretches are all shorter than the lag gets no counts at all. Its frames in a cell that
    no other round counts then carry zero state counts in every thermodynamic state, and TRAM's
    iteration turns them into NaN at once (Müller-Brown on (x, y) at 150 K: a round cut at a
    budget point while its walkers poured into basin B, crossing through cells only they had
    seen). Such frames say nothing TRAM can use; set to -1 they are weighted as the outside ones.
    Setting frames to -1 cuts stretches further, so this repeats until the counts hold."""
    while True:
        dataset = make(dtrajs)
        counted = dataset.state_counts > 0
        uncounted = [(d >= 0) & ~counted[t, np.maximum(d, 0)] for d, t in zip(dtrajs, ttrajs)]
        if not any(u.any() for u in uncounted):
            return dataset
        dtrajs = [np.where(u, -1, d).astype(np.int32) for d, u in zip(dtrajs, uncounted)]


def tram_weights(frames, cv_names, biases: list, kT: float, lower, upper, bins: int,
                 maxiter: int = 100000, maxerr: float = 1e-9, tolerance_kT: float = 1e-3,
                 lagtime: int = 1) -> Reweighting:
    """TRAM weights of ``frames`` (columns round, walker, step and the CVs; any order).

    ``biases[k]`` is the bias (callable on CV values, kJ/mol, or None) round k sampled. Each
    walker's frames of one round form a trajectory in round k's thermodynamic state; the lag
    is ``lagtime`` saved frames. The Markov states are cells of the CVs alone, so the lag must
    outlast what the cells forget, above all the velocity (underdamped Langevin remembers it for
    ~1/friction): at one frame in 0.1 ps, TRAM tilts the 2-D double well's basins by 0.8 kT.
    Frames outside TRAM's largest connected set get their MBAR weight
    (``outside_log_weights``); with none outside the weights are TRAM's alone. Raises when
    the self-consistent iteration does not converge (``_converge``).
    """
    from deeptime.markov import TransitionCountEstimator
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
    if max(len(d) for d in dtrajs) <= lagtime:
        raise ValueError(f"TRAM's lag of {lagtime} frames is as long as every walker's round "
                         f"(at most {max(len(d) for d in dtrajs)} frames): no transition to count; "
                         "shorten guidance.markov_lag or save frames more often")
    # a walker's round no longer than the lag (the last round cut short at a convergence-curve
    # budget point) has no transition: it is left out of TRAM and weighted by MBAR, as outside
    counted = [len(d) > lagtime for d in dtrajs]
    take = lambda a: [p for p, c in zip(pieces(a), counted) if c]  # noqa: E731
    ttrajs = [p.astype(np.int32) for p in take(rounds)]
    make = lambda d: TRAMDataset(dtrajs=d, bias_matrices=take(u), ttrajs=ttrajs,  # noqa: E731
                                 n_therm_states=n_states, n_markov_states=len(used), lagtime=lagtime)
    # the connected set of the transitions of all rounds together: the biases are functions of the
    # CVs alone, nearly constant within a cell, so rounds visiting the same cell overlap there
    # (deeptime's post_hoc_RE check assumes one trajectory per thermodynamic state)
    in_tram_dtrajs = [d for d, c in zip(dtrajs, counted) if c]
    counts = TransitionCountEstimator(lagtime=lagtime, count_mode="sliding").fit_fetch(in_tram_dtrajs)
    keep = counts.submodel_largest(directed=True).state_symbols
    # a Markov state visited for less than one lag in all (a saddle crossed quickly) links its
    # neighbours through its transitions, but they say little of its own weight, and TRAM may
    # hand its few frames most of it (ESS 4 of 2880 alanine frames, from two cells of 1-2 frames
    # each): it stays in TRAM, and its frames are weighted as the outside ones
    brief = np.flatnonzero(counts.state_histogram < lagtime)
    with warnings.catch_warnings():
        # a round whose every walker is outside (or cut short) is linked by its bias energies alone
        warnings.filterwarnings("ignore", message="No transitions for thermodynamic state")
        dataset = _counted_dataset(make, [np.where(np.isin(d, keep), d, -1).astype(np.int32) for d in in_tram_dtrajs],
                                   ttrajs)
    model = _converge(TRAM, dataset, maxiter, maxerr, tolerance_kT, lagtime)
    in_tram = np.repeat(counted, [len(d) for d in dtrajs])
    log_w = np.full(len(cv), -np.inf)
    log_w[in_tram] = np.concatenate(model.compute_sample_weights_log(dataset.dtrajs, dataset.bias_matrices))
    connected = np.zeros(len(cv), dtype=bool)
    kept_states = np.concatenate(dataset.dtrajs)  # -1: outside the connected set
    connected[in_tram] = (kept_states >= 0) & ~np.isin(kept_states, brief)
    if not connected.all():
        log_w[~connected] = outside_log_weights(log_w, connected, u, rounds, n_states)
    w_sorted = np.exp(log_w - log_w.max())
    w_sorted /= w_sorted.sum()
    weights = np.empty_like(w_sorted)
    weights[order] = w_sorted
    f_k = np.asarray(model.therm_state_energies, dtype=float)
    n_k = np.array([np.sum(rounds == k) for k in range(n_states)])
    ess_round = np.array([kish(w_sorted[rounds == k]) for k in range(n_states)])
    inside = np.empty_like(connected)
    inside[order] = connected
    result = Reweighting(weights, f_k - f_k[0], n_k, kish(weights), ess_round, None, inside)
    log.info("TRAM over %d thermodynamic states, %d Markov states: f_k = %s kT, ESS %.0f of %d frames", n_states, len(used),
             np.round(result.f_k, 3), result.ess, len(weights))
    if not connected.all():
        log.info("%d frames outside TRAM's connected set (per round %s) weighted by MBAR: %.3g of the weight",
                 int((~connected).sum()), np.bincount(rounds[~connected], minlength=n_states).tolist(),
                 float(w_sorted[~connected].sum()))
    return result
