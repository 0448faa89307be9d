"""Free-energy surfaces from (weighted) samples of collective variables.

A surface is a histogram estimate F = -kT ln(p_bin / bin_volume) on a regular grid, with
block-bootstrap standard errors. Bins where no sample fell stay NaN: a made-up number there
would look like data. Weights let biased runs (w ∝ exp(+V/kT)) be reweighted to the unbiased
ensemble. :func:`compare_to_reference` scores a surface against a known one without letting a
run that never left one well look perfect: unvisited bins count at the estimator's detection
limit instead of being dropped.

Surfaces travel as ``fes.csv`` (one row per bin, C order, empty field for NaN), written by
:func:`write_fes_csv` and read back, e.g. as a reference, by :func:`read_fes_csv`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cgflow.io import atomic_path

MIN_BLOCKS = 8
"""Fewer independent blocks than this are split into contiguous sub-blocks for the bootstrap."""


@dataclass(frozen=True, eq=False)
class FES:
    """A free-energy surface on a regular grid of bins, kJ/mol, shifted to zero at its minimum.

    ``counts``, ``n_eff`` and ``F_detect`` are known only for a surface estimated from samples;
    one read from a file has them as None.
    """

    edges: tuple[np.ndarray, ...]
    """One array of bin edges per CV."""
    F: np.ndarray
    """Shape = bins per CV; NaN where no sample (of positive weight) fell."""
    F_err: np.ndarray
    """Block-bootstrap standard error; NaN where F is NaN or too few replicas reached the bin."""
    counts: np.ndarray | None = None
    """Raw sample counts per bin."""
    n_eff: float | None = None
    """Kish effective sample size of the weights, (Σw)² / Σw²; the sample count for uniform weights."""
    F_detect: np.ndarray | None = None
    """Detection limit on F's scale: the F at which one effective sample would be expected in a bin."""

    @property
    def centers(self) -> tuple[np.ndarray, ...]:
        return tuple(0.5 * (e[1:] + e[:-1]) for e in self.edges)


def histogram_fes(
    cv: np.ndarray,
    edges,
    kT: float,
    weights: np.ndarray | None = None,
    blocks: np.ndarray | None = None,
    n_bootstrap: int = 200,
    seed: int = 0,
    strata: np.ndarray | None = None,
) -> FES:
    """Estimate a free-energy surface from samples ``cv`` (n, d) binned on ``edges``.

    Samples outside the edges (or NaN) are ignored; the last bin includes its right edge,
    as in :func:`numpy.histogram`. Periodic CVs need only edges spanning the period.

    ``weights`` (n,) are non-negative (None: uniform). ``blocks`` (n,) label statistically
    independent blocks of samples, normally the walker index (None: one block). Errors are the
    standard deviation of -kT ln(p/vol) over ``n_bootstrap`` replicas that resample whole
    blocks with replacement; there is no per-replica shift, so the minimum bin gets an honest
    error too, and a replica that leaves a bin empty is skipped for that bin. With fewer than
    ``MIN_BLOCKS`` distinct blocks, each block's samples, in their given (time) order, are cut
    into contiguous sub-blocks so that there are at least ``MIN_BLOCKS``: a single walker still
    gets block-averaging error bars, provided its sub-blocks are longer than its correlation time.
    ``strata`` (n,) label groups whose sample counts are fixed, the sampling rounds of reweighted
    samples: blocks are resampled within each (:func:`resampled_blocks`), and the MIN_BLOCKS
    rule applies per stratum.
    """
    edges = tuple(np.asarray(e, dtype=float) for e in edges)
    cv = np.asarray(cv, dtype=float)
    if cv.ndim == 1:
        cv = cv[:, None]
    n, d = cv.shape
    if d != len(edges):
        raise ValueError(f"cv has {d} columns but {len(edges)} edge arrays were given")
    for e in edges:
        if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
            raise ValueError("each edge array must be 1-D, strictly increasing, with at least 2 entries")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite, non-negative, one per sample")
    labels = np.zeros(n, dtype=int) if blocks is None else np.asarray(blocks)
    if labels.shape != (n,):
        raise ValueError("blocks must give one label per sample")
    if strata is not None:
        strata = np.asarray(strata)
        if strata.shape != (n,):
            raise ValueError("strata must give one label per sample")
    if n_bootstrap < 2:
        raise ValueError("n_bootstrap must be at least 2")

    flat, inside = _bin_index(cv, edges)
    w, labels = w[inside], labels[inside]
    strata = None if strata is None else strata[inside]
    if w.sum() <= 0:
        raise ValueError("no sample of positive weight falls inside the edges")
    w = w / w.max()  # F is scale-invariant; this keeps Σw² finite for weights like exp(+V/kT)

    shape = tuple(e.size - 1 for e in edges)
    n_bins = int(np.prod(shape))
    vol = _bin_volume(edges).ravel()
    mass = np.bincount(flat, weights=w, minlength=n_bins)
    F_raw = _free_energy(mass / mass.sum(), vol, kT)
    offset = np.nanmin(F_raw)
    n_eff = float(w.sum() ** 2 / np.sum(w**2))

    codes, multiplicity = resampled_blocks(labels, strata, n_bootstrap, np.random.default_rng(seed))
    F_err = _bootstrap_error(flat, w, codes, multiplicity, vol, kT)
    return FES(
        edges=edges,
        F=(F_raw - offset).reshape(shape),
        F_err=F_err.reshape(shape),
        counts=np.bincount(flat, minlength=n_bins).reshape(shape),
        n_eff=n_eff,
        F_detect=(kT * np.log(n_eff * vol) - offset).reshape(shape),
    )


def _bin_index(cv: np.ndarray, edges: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flat C-order bin index of the samples inside the grid, and the mask of those samples."""
    per_dim = []
    inside = np.ones(len(cv), dtype=bool)
    for x, e in zip(cv.T, edges):
        i = np.searchsorted(e, x, side="right") - 1
        i[x == e[-1]] = e.size - 2
        inside &= (i >= 0) & (i < e.size - 1)
        per_dim.append(i)
    shape = tuple(e.size - 1 for e in edges)
    return np.ravel_multi_index(tuple(i[inside] for i in per_dim), shape), inside


def _bin_volume(edges: tuple[np.ndarray, ...]) -> np.ndarray:
    vol = np.ones(())
    for e in edges:
        vol = np.multiply.outer(vol, np.diff(e))
    return vol


def _free_energy(p: np.ndarray, vol: np.ndarray, kT: float) -> np.ndarray:
    """-kT ln(p / vol), NaN where p is zero."""
    log_density = np.log(p / vol, out=np.full(np.shape(p), np.nan), where=p > 0)
    return -kT * log_density


def bin_free_energy(axes, grid_F: np.ndarray, edges, kT: float, sub: int = 16) -> np.ndarray:
    """Each bin's free energy -kT ln((1/|bin|) integral over the bin of exp(-F/kT)), kJ/mol, from F
    given at grid points (``axes``: the points per CV, F linear between them).

    What a histogram of samples estimates and what the toys' exact PMF is, so that a surface known
    at points (metadynamics' ``getFreeEnergy``) is scored on the same footing as the others: read
    at the bin centres instead, alanine's 10-degree bins differ from their averages by 0.12 kT
    RMSE below 8 kT. The integral is the mean over ``sub`` evenly spaced points per CV in each bin.
    """
    from scipy.interpolate import RegularGridInterpolator
    from scipy.special import logsumexp

    inner = [(e[:-1, None] + (np.arange(sub) + 0.5) / sub * np.diff(e)[:, None]).ravel() for e in edges]
    mesh = np.meshgrid(*inner, indexing="ij")
    F = RegularGridInterpolator(axes, grid_F, method="linear")(np.stack([m.ravel() for m in mesh], axis=-1))
    shape = [n for e in edges for n in (len(e) - 1, sub)]
    log_mean = logsumexp(-F.reshape(shape) / kT, axis=tuple(range(1, 2 * len(edges), 2))) - len(edges) * np.log(sub)
    return -kT * log_mean


def connected_share(cv: np.ndarray, edges, weights: np.ndarray, connected: np.ndarray) -> np.ndarray:
    """Per bin, the share of its weight on samples inside TRAM's connected set; NaN where no weight
    fell. A bin below one half rests mostly on frames whose weight no transition pins (see
    :mod:`cgflow.analysis.tram`)."""
    cv = np.asarray(cv, dtype=float).reshape(len(weights), -1)
    connected = np.asarray(connected, dtype=bool)
    total, _ = np.histogramdd(cv, bins=edges, weights=weights)
    held, _ = np.histogramdd(cv[connected], bins=edges, weights=weights[connected])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, held / total, np.nan)


def mostly_outside(share: np.ndarray) -> np.ndarray:
    """Bins (of a :func:`connected_share`) whose weight is mostly outside TRAM's connected set."""
    with np.errstate(invalid="ignore"):
        return np.asarray(share, dtype=float) < 0.5


def _sub_blocks(labels: np.ndarray) -> np.ndarray:
    """Block codes 0..B-1, with blocks split into contiguous pieces when there are fewer than MIN_BLOCKS."""
    uniq, codes = np.unique(labels, return_inverse=True)
    if uniq.size >= MIN_BLOCKS:
        return codes
    pieces = -(-MIN_BLOCKS // uniq.size)
    split = np.empty_like(codes)
    for b in range(uniq.size):
        for k, idx in enumerate(np.array_split(np.flatnonzero(codes == b), pieces)):
            split[idx] = b * pieces + k
    return np.unique(split, return_inverse=True)[1]


def resampled_blocks(labels: np.ndarray, strata: np.ndarray | None, replicas: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A block bootstrap: each sample's block code (n,) and how often each replica draws each
    block (replicas, B).

    Blocks are drawn with replacement within their stratum, as many as the stratum has: a
    sampling round's frame count is fixed by design, and the MBAR/TRAM weights assume it, so
    a replica that drew more blocks of a biased round would put more weight on the barrier it
    sampled than the weights allow. A stratum with fewer than :data:`MIN_BLOCKS` blocks has
    them split into contiguous pieces (:func:`_sub_blocks`). ``strata`` None: one stratum.
    """
    labels = np.asarray(labels)
    strata = np.zeros(len(labels), dtype=int) if strata is None else np.asarray(strata)
    codes, block_stratum = np.empty(len(labels), dtype=int), []
    for k, stratum in enumerate(np.unique(strata)):
        members = np.flatnonzero(strata == stratum)
        sub = _sub_blocks(labels[members])
        codes[members] = sub + len(block_stratum)
        block_stratum += [k] * (sub.max() + 1)
    n_blocks, block_stratum = len(block_stratum), np.array(block_stratum)
    multiplicity = np.zeros((replicas, n_blocks), dtype=int)
    for k in np.unique(block_stratum):
        own = np.flatnonzero(block_stratum == k)
        drawn = own[rng.integers(own.size, size=(replicas, own.size))] + n_blocks * np.arange(replicas)[:, None]
        multiplicity += np.bincount(drawn.ravel(), minlength=replicas * n_blocks).reshape(replicas, n_blocks)
    return codes, multiplicity


def _bootstrap_error(flat: np.ndarray, w: np.ndarray, codes: np.ndarray, multiplicity: np.ndarray, vol: np.ndarray,
                     kT: float) -> np.ndarray:
    n_blocks, n_bins = multiplicity.shape[1], vol.size
    block_mass = np.bincount(codes * n_bins + flat, weights=w, minlength=n_blocks * n_bins).reshape(n_blocks, n_bins)
    mass = multiplicity @ block_mass
    total = mass.sum(axis=1, keepdims=True)
    p = np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
    F = _free_energy(p, vol, kT)
    ok = np.isfinite(F)
    n_ok = ok.sum(axis=0)
    mean = np.where(ok, F, 0.0).sum(axis=0) / np.maximum(n_ok, 1)
    var = np.where(ok, (F - mean) ** 2, 0.0).sum(axis=0) / np.maximum(n_ok - 1, 1)
    return np.where(n_ok >= 2, np.sqrt(var), np.nan)


def compare_to_reference(fes: FES, reference: FES | np.ndarray, kT: float, cutoff_kT: float = 6.0) -> dict:
    """Score ``fes`` against a reference surface on the same grid.

    The region is the bins where the reference, shifted to zero at its minimum, is below
    ``cutoff_kT`` kT. ``fes`` is aligned to the reference by the constant that minimises the
    RMSE over the region's visited bins (their mean difference). Unvisited region bins are not
    dropped but counted at ``fes.F_detect``, the F at which one sample would have been expected:
    this is why the estimate is an :class:`FES` (from :func:`histogram_fes`), not a bare array.

    Returns ``rmse_kT`` (RMSE over the whole region, in kT; NaN when no region bin was
    visited), ``coverage`` (fraction of region bins visited), ``n_bins`` (region size) and
    ``outside_mass``: the estimate's probability outside the region, where the reference is
    above the cutoff or has no data. The free shift lets the RMSE ignore that mass entirely
    (a CG model that puts half its weight in a basin the reference never visits still scores
    well on the region), so the two are read together.
    """
    F_ref = reference.F if isinstance(reference, FES) else np.asarray(reference, dtype=float)
    if F_ref.shape != fes.F.shape:
        raise ValueError(f"reference shape {F_ref.shape} differs from the surface's {fes.F.shape}")
    F_ref = F_ref - np.nanmin(F_ref)
    region = F_ref < cutoff_kT * kT
    n_bins = int(region.sum())
    if n_bins == 0:
        raise ValueError("the reference has no bin below the cutoff")
    visited = region & np.isfinite(fes.F)
    coverage = float(visited.sum() / n_bins)
    mass = _bin_mass(fes, kT)
    outside_mass = float(mass[~region].sum() / mass.sum()) if mass.any() else float("nan")
    if not visited.any():
        return {"rmse_kT": float("nan"), "coverage": coverage, "n_bins": n_bins, "outside_mass": outside_mass}
    estimate = fes.F
    if coverage < 1:
        if fes.F_detect is None:
            raise ValueError("the surface has unvisited region bins but no detection limit (was it read from a file?)")
        estimate = np.where(np.isfinite(fes.F), fes.F, fes.F_detect)
    shift = np.mean(F_ref[visited] - fes.F[visited])
    diff = estimate[region] + shift - F_ref[region]
    return {"rmse_kT": float(np.sqrt(np.mean(diff**2)) / kT), "coverage": coverage, "n_bins": n_bins,
            "outside_mass": outside_mass}


def _bin_mass(fes: FES, kT: float) -> np.ndarray:
    """Each bin's probability, up to a constant, from F = -kT ln(p / volume); 0 where F is NaN."""
    finite = np.isfinite(fes.F)
    if not finite.any():
        return np.zeros(fes.F.shape)
    F = np.where(finite, fes.F, np.inf)
    return _bin_volume(fes.edges) * np.exp(-(F - fes.F[finite].min()) / kT)


def fes_frame(fes: FES, cv_names, reference: FES | np.ndarray | None = None):
    """One row per bin (C order): bin centres under the CV names, ``F_kJmol``, ``F_err_kJmol``,
    and ``F_ref_kJmol`` when a reference (zero-shifted, same shape) is given. NaN stays NaN."""
    import pandas as pd

    cv_names = list(cv_names)
    if len(cv_names) != fes.F.ndim:
        raise ValueError(f"{len(cv_names)} CV names for a {fes.F.ndim}-D surface")
    grid = np.meshgrid(*fes.centers, indexing="ij")
    data = {name: g.ravel() for name, g in zip(cv_names, grid)}
    data["F_kJmol"] = fes.F.ravel()
    data["F_err_kJmol"] = fes.F_err.ravel()
    if reference is not None:
        F_ref = reference.F if isinstance(reference, FES) else np.asarray(reference, dtype=float)
        if F_ref.shape != fes.F.shape:
            raise ValueError(f"reference shape {F_ref.shape} differs from the surface's {fes.F.shape}")
        data["F_ref_kJmol"] = F_ref.ravel()
    return pd.DataFrame(data)


def write_fes_csv(frame, path: str | os.PathLike) -> None:
    """Write a :func:`fes_frame` atomically; NaN becomes an empty field."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def fes_from_frame(frame, cv_names, column: str = "F_kJmol") -> FES:
    """Rebuild a surface from a frame of bin centres on a full regular grid (any row order).

    ``column`` picks the F to read (e.g. ``F_ref_kJmol``); it is shifted to zero at its minimum.
    Edges are rebuilt from the centres, which must be evenly spaced. ``F_err_kJmol`` is read
    when present (else NaN); counts, n_eff and F_detect are unknown (None).
    """
    cv_names = list(cv_names)
    rows = frame.sort_values(cv_names, kind="stable")
    axes = [np.unique(rows[name].to_numpy(dtype=float)) for name in cv_names]
    shape = tuple(a.size for a in axes)
    grid = np.meshgrid(*axes, indexing="ij")
    if int(np.prod(shape)) != len(rows) or not all(
        np.array_equal(rows[name].to_numpy(dtype=float), g.ravel()) for name, g in zip(cv_names, grid)
    ):
        raise ValueError("the rows do not form a full grid of bin centres, one row per bin")
    F = rows[column].to_numpy(dtype=float).reshape(shape)
    if "F_err_kJmol" in rows:
        F_err = rows["F_err_kJmol"].to_numpy(dtype=float).reshape(shape)
    else:
        F_err = np.full(shape, np.nan)
    shifted = F - np.nanmin(F) if np.isfinite(F).any() else F  # all NaN: nothing trusted to shift by
    return FES(edges=tuple(_edges_from_centres(a) for a in axes), F=shifted, F_err=F_err)


def read_fes_csv(path: str | os.PathLike, cv_names, column: str = "F_kJmol") -> FES:
    """Read a ``fes.csv`` (e.g. a reference) back into an :class:`FES`; see :func:`fes_from_frame`."""
    return fes_from_frame(read_fes_frame(path, cv_names, column), cv_names, column)


def read_fes_frame(path: str | os.PathLike, cv_names, column: str = "F_kJmol"):
    """A ``fes.csv`` as a DataFrame, checked to have a column per CV and ``column``."""
    import pandas as pd

    from cgflow.io import InputError, reading

    with reading(path, "fes.csv", (ValueError,)):  # pandas' parser errors and UnicodeDecodeError are ValueErrors
        frame = pd.read_csv(path)
    missing = [c for c in [*cv_names, column] if c not in frame]
    if missing:
        raise InputError(f"{path} is not a fes.csv on the CVs {list(cv_names)}: it has no column {', '.join(missing)}")
    return frame


def _edges_from_centres(c: np.ndarray) -> np.ndarray:
    if c.size < 2:
        raise ValueError("need at least 2 bin centres per CV to rebuild the edges")
    h = np.diff(c)
    if not np.allclose(h, h.mean(), rtol=1e-3, atol=0):
        raise ValueError("bin centres are not evenly spaced")
    return np.concatenate([[c[0] - h[0] / 2], 0.5 * (c[1:] + c[:-1]), [c[-1] + h[-1] / 2]])
