"""The bias policy: a VES update toward the CG model's well-tempered target.

The bias V_a(s) = sum_i a_i f_i(s) (Legendre polynomials, or a Fourier series for periodic
CVs, tensor products across CVs) minimises the variationally-enhanced-sampling functional
(Valsson & Parrinello 2014), estimated from the FG samples of all rounds:

    Omega(a) = kT ln <exp(-V_a/kT)>_unbiased + <V_a>_target,

where the unbiased average reweights every FG frame with its MBAR weight, so the gradient
-<f>_{V_a} + <f>_target is an off-policy policy-gradient estimate from the biased episodes.
The target is p_target ~ exp(-F_cg/(gamma kT)) from the CG ensemble. Both averages are taken
with the trust weight sigma(eps(s)) (1 below e0, cosine to 0 at e1, eps the ensemble
disagreement): the bias is learnt only where the CG model is trusted, and there its minimiser
is V = -F - kT ln p_target + c. Omega is convex in a, so L-BFGS finds the minimum.

The applied bias is sigma(eps) clip(V - V_0 + cap, 0, cap), V_0 its value at the bottom of the
deepest trusted basin and cap = (1 - 1/gamma) times the trusted free-energy range: it fills the
known basins from their bottoms, is zero toward the frontier of what the model knows, and so
pushes walkers there to explore freely beyond it. ``guidance.overfill`` adds to that range, so
the frontier keeps (1 - 1/gamma) overfill of bias and the walkers meet the unknown that much
lower: on alanine the frontier otherwise climbs the 15 kT phi ~ 0 saddle by about 1 kT a round.
``guidance.barrier`` bounds cap (OPES's BARRIER), so the fill stops growing with the walkers'
reach once it can lower the highest barrier that matters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)


def trust(eps: np.ndarray, e0: float, e1: float) -> np.ndarray:
    """sigma(eps): 1 below e0, a cosine down to 0 between e0 and e1, 0 above (METHODS §1)."""
    t = np.clip((np.asarray(eps) - e0) / (e1 - e0), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


SUPPORT_BINS = 32


def _support_edges(lower, upper) -> list[np.ndarray]:
    """Cell edges of the SUPPORT_BINS-per-CV grid that frame counts are taken on."""
    return [np.linspace(lo, hi, SUPPORT_BINS + 1) for lo, hi in zip(lower, upper)]


def data_support(cv: np.ndarray, lower, upper, periodic, min_frames: int):
    """A smooth [0, 1] map of where FG frames exist: per cell of a SUPPORT_BINS-per-CV grid,
    1 from ``min_frames`` frames up, a cosine down to 0 at none; linear between cell centres,
    and the outermost cell's value from its centre to the box edge of a non-periodic CV.

    The ensemble disagreement alone cannot mark the unvisited: maximum likelihood pushes every
    member's energy up where there are no frames, so the members agree that it is high, and a
    bias built there would over-fill the known basins far beyond the barriers around them.
    """
    from scipy.interpolate import RegularGridInterpolator

    edges = _support_edges(lower, upper)
    counts, _ = np.histogramdd(np.atleast_2d(cv), bins=edges)
    values = trust(min_frames - counts, 0.0, float(min_frames))
    axes = [0.5 * (e[1:] + e[:-1]) for e in edges]
    for i, p in enumerate(periodic):
        if p:
            width = upper[i] - lower[i]
            values = np.concatenate([np.take(values, [-1], axis=i), values, np.take(values, [0], axis=i)], axis=i)
            axes[i] = np.concatenate([[axes[i][-1] - width], axes[i], [axes[i][0] + width]])
    interpolate = RegularGridInterpolator(axes, values)

    def support(points: np.ndarray) -> np.ndarray:
        points = np.atleast_2d(points).astype(float).copy()
        for i, p in enumerate(periodic):
            if p:
                points[:, i] = lower[i] + np.mod(points[:, i] - lower[i], upper[i] - lower[i])
            else:
                points[:, i] = np.clip(points[:, i], axes[i][0], axes[i][-1])
        return np.clip(interpolate(points), 0.0, 1.0)

    return support


def data_free_energy_range(cv: np.ndarray, weights: np.ndarray, lower, upper, min_frames: int, kT: float) -> float:
    """Spread (kJ/mol) of the reweighted FG free energy over the SUPPORT_BINS cells holding at least
    ``min_frames`` frames: how high the data, not the CG model, say the visited barriers are."""
    edges = _support_edges(lower, upper)
    cv = np.atleast_2d(cv)
    counts, _ = np.histogramdd(cv, bins=edges)
    mass, _ = np.histogramdd(cv, bins=edges, weights=weights)
    held = (counts >= min_frames) & (mass > 0)
    return float(np.ptp(-kT * np.log(mass[held]))) if held.sum() > 1 else 0.0


def held_outside(cv: np.ndarray, connected: np.ndarray, lower, upper, min_frames: int) -> np.ndarray:
    """Which frames lie outside TRAM's connected set in a cell (SUPPORT_BINS per CV) that holds at
    least ``min_frames`` of them: a basin the walkers crossed into, or out of, one way only. The
    other outside frames are a few to a cell: a saddle crossed on the way, a Markov state visited
    for less than TRAM's lag."""
    from cgflow.analysis.tram import markov_states

    outside = ~np.asarray(connected, dtype=bool)
    if not outside.any():
        return outside
    return _held(markov_states(cv, lower, upper, SUPPORT_BINS), outside, np.atleast_2d(cv).shape[1], min_frames)


def _held(cell: np.ndarray, outside: np.ndarray, n_cvs: int, min_frames: int) -> np.ndarray:
    counts = np.bincount(cell[outside], minlength=SUPPORT_BINS ** n_cvs)
    return outside & (counts >= min_frames)[cell]


def remembered_cells(cv: np.ndarray, connected: np.ndarray, lower, upper, min_frames: int, round_index: int,
                     memory: int, earlier: dict[int, int]) -> dict[int, int]:
    """The cells (SUPPORT_BINS per CV) the guidance levels at round ``round_index``, each with
    the last round it was held outside TRAM's connected set (``held_outside``): this round's,
    and those of ``earlier`` (the previous round's answer) held within the last ``memory`` rounds.

    A basin entered one way is outside; the first walkers to re-cross the saddle back and forth
    connect it, while TRAM, from those few transitions, still weighs it far too light (alanine's
    C7ax: 75x, HISTORY.md 2026-12-07). Levelled only while outside, it would be a deep unbiased pit
    again in the next round, trapping the walkers until whole round trips give TRAM its depth."""
    from cgflow.analysis.tram import markov_states

    kept = {cell: last for cell, last in earlier.items() if last >= round_index - memory} if memory else {}
    cell = markov_states(cv, lower, upper, SUPPORT_BINS)
    held = _held(cell, ~np.asarray(connected, dtype=bool), np.atleast_2d(cv).shape[1], min_frames)
    kept.update(dict.fromkeys(np.unique(cell[held]).tolist(), round_index))
    return kept


def levelled_weights(cv: np.ndarray, weights: np.ndarray, connected: np.ndarray, lower, upper,
                     min_frames: int, remembered=()) -> np.ndarray:
    """The weights the CG model and the bias learn from: the unbiased ones, except that frames
    outside TRAM's connected set (a basin crossed into or out of one way only) are scaled so that
    their deepest cell is as deep as the deepest connected one.

    No transition links the two sides, so their relative depth comes from MBAR's equilibrium
    assumption alone, and that is wrong in the direction of the crossing: the rounds that could
    have entered the new basin but did not count against it (on alanine's alpha_L: 0.07 % of the
    weight against an exact 3 %), or the old basin keeps the weight of the rounds spent in it
    (the 2-D double well after a crossing: 99.9 % of the weight in the basin left behind). The
    CG model then puts the suppressed side many kT up, the bias leaves it unfilled, and the
    walkers are trapped on one side. Level, the bias fills both, the walkers cross back, which
    connects the two and gives TRAM the true depth; the final FES always uses the unbiased
    weights. Only the ``held_outside`` frames set the level and are levelled. The other outside
    frames keep their weight: levelled by the basin's factor (~1e4 on alanine) they would be deep
    wells to the CG model, and its bias would wall off the saddle the walkers return over.
    Frames in the ``remembered`` cells (``remembered_cells``) count as outside, connected or not."""
    from cgflow.analysis.tram import markov_states

    cell = markov_states(cv, lower, upper, SUPPORT_BINS)
    connected = np.asarray(connected, dtype=bool) & ~np.isin(cell, np.fromiter(remembered, dtype=np.int64))
    if connected.all() or not connected.any():
        return weights
    n_cvs = np.atleast_2d(cv).shape[1]
    levelled = _held(cell, ~connected, n_cvs, min_frames)
    n_cells = SUPPORT_BINS ** n_cvs
    mass_in = np.bincount(cell[connected], weights=weights[connected], minlength=n_cells)
    mass_out = np.bincount(cell[levelled], weights=weights[levelled], minlength=n_cells)
    if mass_out.max() <= 0 or mass_in.max() <= 0:
        return weights
    factor = float(mass_in.max() / mass_out.max())
    out = np.where(levelled, weights * factor, weights)
    log.info("%d of the %d frames outside TRAM's connected set weighted %.3g-fold for guidance (%.3g -> %.3g "
             "of the weight)", levelled.sum(), (~connected).sum(), factor, weights[~connected].sum() / weights.sum(),
             out[~connected].sum() / out.sum())
    return out / out.sum()


def fill(V: np.ndarray, sigma: np.ndarray, cap: float, F: np.ndarray) -> np.ndarray:
    """The bias OpenMM applies, from the policy's V on the bias grid, the trust sigma and the CG
    model's free energy F there: sigma * clip(V - V_0 + cap, 0, cap), V_0 the value of V at the
    bottom of the deepest basin, the trusted point (sigma >= 0.5) where F is lowest.

    Counted down from the deepest basin, where the most frames pin V, so the basins and barriers
    get their well-tempered fill; the clip takes only the periphery, toward the frontier, where a
    basis function the data pin poorly could dip or blow up. Counted down from V's maximum
    instead, such a blow-up set the top: on Müller-Brown at gamma 2 the Legendre series rose
    2 kT above basin A at the x = -1.5 edge and left A 1 kJ/mol of the 5.4 due. Counted up from
    V's minimum, an edge dip clipped the fill off the basin bottoms: 6-7 kT barriers left on the
    2-D double well where (1/gamma) 10 kT = 1.25 kT was due."""
    on = np.flatnonzero(sigma >= 0.5)
    bottom = on[np.argmin(F[on])]
    return sigma * np.clip(V - (V[bottom] - cap), 0.0, cap)


@dataclass(frozen=True)
class Basis:
    """Tensor-product basis on the CV domain, without the constant (Omega ignores constants)."""

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    periodic: tuple[bool, ...]
    order: int

    def _one_dim(self, x: np.ndarray, i: int) -> np.ndarray:
        lo, hi = self.lower[i], self.upper[i]
        if self.periodic[i]:
            k = np.arange(1, self.order // 2 + 1)
            angle = 2 * np.pi * (x[:, None] - lo) / (hi - lo) * k
            return np.concatenate([np.ones((len(x), 1)), np.cos(angle), np.sin(angle)], axis=1)
        t = np.clip(2 * (x - lo) / (hi - lo) - 1, -1, 1)
        return np.polynomial.legendre.legvander(t, self.order)

    def __call__(self, s: np.ndarray) -> np.ndarray:
        """Basis values, shape (n, n_functions)."""
        s = np.atleast_2d(s)
        out = self._one_dim(s[:, 0], 0)
        for i in range(1, s.shape[1]):
            out = (out[:, :, None] * self._one_dim(s[:, i], i)[:, None, :]).reshape(len(s), -1)
        return out[:, 1:]


@dataclass(frozen=True)
class PolicyResult:
    coefficients: np.ndarray
    omega_kJmol: float
    iterations: int
    biased_ess: float  # Kish ESS of the FG frames reweighted to the new (trusted-region) bias


def fit_policy(basis: Basis, cv: np.ndarray, weights: np.ndarray, trust_samples: np.ndarray,
               target_points: np.ndarray, target_logp: np.ndarray, trust_points: np.ndarray, kT: float,
               steps: int, ridge: float = 1e-4) -> PolicyResult:
    """Minimise the trust-weighted VES functional over the basis coefficients.

    ``cv``, ``weights`` (MBAR, unbiased) and ``trust_samples`` are per FG frame;
    ``target_points`` is a quadrature grid with the target's log-density ``target_logp`` and
    the trust there, ``trust_points``. ``ridge`` (kJ/mol per squared coefficient) keeps
    directions the data do not determine at zero.
    """
    import torch

    f_data = torch.as_tensor(basis(cv), dtype=torch.float64)
    f_grid = torch.as_tensor(basis(target_points), dtype=torch.float64)
    log_wd = torch.as_tensor(np.log(np.maximum(weights * trust_samples, 1e-300)), dtype=torch.float64)
    p_t = np.exp(target_logp - target_logp.max()) * trust_points
    p_t = torch.as_tensor(p_t / p_t.sum(), dtype=torch.float64)
    a = torch.zeros(f_data.shape[1], dtype=torch.float64, requires_grad=True)

    def omega():
        v_data = f_data @ a
        data_term = kT * (torch.logsumexp(log_wd - v_data / kT, 0) - torch.logsumexp(log_wd, 0))
        return data_term + p_t @ (f_grid @ a) + ridge * (a @ a)

    optimizer = torch.optim.LBFGS([a], max_iter=steps, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure():
        optimizer.zero_grad()
        loss = omega()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        value = float(omega())
        v = (f_data @ a).numpy()
    if not np.isfinite(value):
        raise RuntimeError("the VES functional diverged (non-finite); check guidance.e0/e1 and the samples")
    log_w = np.log(np.maximum(weights * trust_samples, 1e-300)) - v / kT
    w = np.exp(log_w - log_w.max())
    iterations = optimizer.state[optimizer._params[0]]["n_iter"]
    return PolicyResult(a.detach().numpy().copy(), value, int(iterations), float(w.sum() ** 2 / (w @ w)))
