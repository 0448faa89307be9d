"""Where the next round's walkers start.

A fraction of the walkers restarts from recent frames (the latest round) where the CG
ensemble disagrees most and the FG data are thinnest, so new trajectories begin at the
frontier of what is known (Reinforced Dynamics' exploration); the others continue from
their own last frame. The walkers restarted are those whose last frame scores lowest: a
walker that has just reached new ground is never the one taken from it.
"""

from __future__ import annotations

import numpy as np


def frontier_scores(eps: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-frame score in [0, 1]: half ensemble disagreement, half rarity of the frame's bin."""
    u = eps / eps.max() if eps.max() > 0 else np.zeros_like(eps)
    rarity = 1.0 - np.log1p(counts) / np.log1p(counts.max()) if counts.max() > 0 else np.ones_like(eps)
    return 0.5 * (u + rarity)


def choose_starts(last_frames: np.ndarray, scores: np.ndarray, n_walkers: int, fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick start frames for ``n_walkers`` walkers.

    ``last_frames[w]`` is the index of walker w's own last frame; ``scores`` covers all candidate
    frames. Returns (frame index per walker, whether the walker was re-seeded). The new starts
    are drawn without replacement with probability ~ score^4 (the top of the frontier); they
    replace the walkers whose own last frames score lowest (ties broken at random).
    """
    n_seed = int(round(fraction * n_walkers))
    frames = np.asarray(last_frames).copy()
    seeded = np.zeros(n_walkers, dtype=bool)
    if n_seed == 0:
        return frames, seeded
    p = np.asarray(scores, dtype=float) ** 4 + 1e-12
    picks = rng.choice(len(p), size=min(n_seed, len(p)), replace=False, p=p / p.sum())
    own = np.asarray(scores, dtype=float)[frames]
    who = np.lexsort((rng.permutation(n_walkers), own))[:len(picks)]
    frames[who] = picks
    seeded[who] = True
    return frames, seeded
