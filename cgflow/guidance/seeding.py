"""Where the next round's walkers start.

Some walkers restart from recent frames (the latest round) where the CG ensemble disagrees
most and the FG data are thinnest, so new trajectories begin at the frontier of what is known
(Reinforced Dynamics' exploration); the others continue from their own last frame.

Each coarse cell of the CV domain may hold its share of the walkers under the well-tempered
target (at least one); a restart moves a walker into another cell only from a cell above its
quota to one below. Without that quota, a basin just entered stays the frontier for rounds and
the restarts herd every walker into it, leaving the basin they came from without walkers to
cross back. Within a cell, restarts replace the walkers least at the frontier.
"""

from __future__ import annotations

import numpy as np


def frontier_scores(eps: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-frame score in [0, 1]: half ensemble disagreement, half rarity of the frame's bin."""
    u = eps / eps.max() if eps.max() > 0 else np.zeros_like(eps)
    rarity = 1.0 - np.log1p(counts) / np.log1p(counts.max()) if counts.max() > 0 else np.ones_like(eps)
    return 0.5 * (u + rarity)


def cell_quotas(cells: np.ndarray, target: np.ndarray, n_cells: int, n_walkers: int) -> np.ndarray:
    """Walkers each coarse cell may hold: ceil(n_walkers x the cell's share of ``target``), at
    least 1. ``cells[i]`` is the coarse cell of grid point i and ``target[i]`` the unnormalised
    target density there."""
    mass = np.bincount(cells, weights=target, minlength=n_cells)
    share = mass / mass.sum() if mass.sum() > 0 else np.full(n_cells, 1.0 / n_cells)
    return np.maximum(1, np.ceil(n_walkers * share - 1e-9)).astype(int)


def choose_starts(last_frames: np.ndarray, scores: np.ndarray, cells: np.ndarray, quotas: np.ndarray,
                  fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick start frames for the walkers.

    ``last_frames[w]`` is the index of walker w's own last frame; ``scores`` and ``cells`` (coarse
    cell) cover all candidate frames. Returns (frame index per walker, whether the walker was
    re-seeded). Candidates are tried in a random order weighted by score^4 (the top of the
    frontier first). While its cell is below its quota and another is above, a candidate takes
    the walker least at the frontier from the cells above; otherwise it may only take the place
    of a walker in its own cell that is less at the frontier. At most ``fraction`` of the
    walkers are re-seeded. A negative score marks a frame that may not be a start (outside the
    CV domain); a walker whose own last frame is one is the first to be moved.
    """
    frames = np.asarray(last_frames).copy()
    n_walkers = len(frames)
    seeded = np.zeros(n_walkers, dtype=bool)
    n_seed = int(fraction * n_walkers + 1e-9)
    if n_seed == 0:
        return frames, seeded
    scores = np.asarray(scores, dtype=float)
    held = np.bincount(cells[frames], minlength=len(quotas))
    p = np.where(scores < 0, 0.0, scores**4 + 1e-12)
    with np.errstate(divide="ignore"):
        order = np.argsort(np.log(rng.random(len(p))) / p)[::-1]  # weighted sampling without replacement
    tiebreak = rng.random(n_walkers)
    for candidate in order:
        if seeded.sum() == n_seed or scores[candidate] < 0:  # the no-starts come last
            break
        cell = cells[candidate]
        where = cells[frames]
        over = ~seeded & (held[where] > quotas[where])
        if held[cell] < quotas[cell] and over.any():
            movable = np.flatnonzero(over)
        else:
            movable = np.flatnonzero(~seeded & (where == cell) & (scores[frames] < scores[candidate]))
        if len(movable) == 0:
            continue
        who = movable[np.lexsort((tiebreak[movable], scores[frames[movable]]))[0]]
        held[where[who]] -= 1
        held[cell] += 1
        frames[who] = candidate
        seeded[who] = True
    return frames, seeded
