"""The bias policy (cgflow.guidance): the VES functional's minimiser is the well-tempered bias,
the trust switches, the data support, and where the next round's walkers start."""

from __future__ import annotations

import numpy as np
import pytest

from cgflow.guidance.policy import (SUPPORT_BINS, Basis, data_free_energy_range, data_support, fill, fit_policy,
                                    held_outside, levelled_weights, remembered_cells, trust)
from cgflow.guidance.seeding import cell_quotas, choose_starts, frontier_scores

KT = 2.494


def free_energy(x):
    return 3 * KT * (x**2 - 1) ** 2 + 0.5 * KT * x


@pytest.mark.parametrize("old_bias", [0.0, 0.9], ids=["unbiased frames", "frames of a biased round"])
@pytest.mark.parametrize("gamma", [4.0, 8.0])
def test_ves_minimiser_is_the_well_tempered_bias(gamma, old_bias):
    """Exact samples of F (or of F under an earlier round's bias -old_bias F, with their unbiased
    weights exp(+V/kT)) and the target exp(-F/(gamma kT)) where they are (the trust region): the
    fitted bias is -(1 - 1/gamma) F up to a constant, from the samples alone."""
    grid = np.linspace(-2, 2, 2001)
    V_old = -old_bias * free_energy(grid)
    p = np.exp(-(free_energy(grid) + V_old) / KT)
    rng = np.random.default_rng(0)
    drawn = rng.choice(len(grid), size=40000, p=p / p.sum())
    cv = grid[drawn][:, None] + rng.uniform(-1e-3, 1e-3, (40000, 1))
    weights = np.exp((V_old[drawn] - V_old[drawn].max()) / KT)
    basis = Basis((-2.0,), (2.0,), (False,), 10)
    points = grid[:, None]
    sampled = free_energy(grid) - free_energy(grid).min() < 5 * KT
    trusted = (free_energy(cv[:, 0]) - free_energy(grid).min() < 5 * KT).astype(float)
    policy = fit_policy(basis, cv, weights / weights.sum(), trusted, points,
                        -free_energy(grid) / (gamma * KT), sampled.astype(float), KT, steps=500)
    V = basis(points) @ policy.coefficients
    expected = -(1 - 1 / gamma) * free_energy(grid)
    diff = (V - expected)[sampled]
    assert np.sqrt(np.mean((diff - diff.mean()) ** 2)) / KT < 0.15
    assert 0 < policy.biased_ess <= len(cv)


def test_data_free_energy_range_sees_the_barrier_from_biased_frames():
    """Frames of a bias that lowers the barrier, reweighted by exp(+V/kT): the free-energy spread over
    the well-populated cells is the exact one over those cells, barrier included (the bias cap uses it)."""
    grid = np.linspace(-2, 2, 4001)
    bias = -0.8 * (free_energy(grid) - free_energy(grid).min())
    p = np.exp(-(free_energy(grid) + bias) / KT)
    rng = np.random.default_rng(1)
    pick = rng.choice(len(grid), size=200000, p=p / p.sum())
    cv = grid[pick][:, None]
    weights = np.exp(bias[pick] / KT)
    spread = data_free_energy_range(cv, weights, (-2.0,), (2.0,), 50, KT)
    edges = np.linspace(-2, 2, SUPPORT_BINS + 1)
    counts, _ = np.histogram(cv[:, 0], edges)
    cell = np.digitize(grid, edges[1:-1])
    exact = np.array([-KT * np.log(np.exp(-free_energy(grid[cell == c]) / KT).sum()) for c in np.flatnonzero(counts >= 50)])
    assert spread / KT == pytest.approx(np.ptp(exact) / KT, abs=0.15)
    assert np.ptp(exact) > 3 * KT  # the barrier (3 kT high) is inside the spread
    assert data_free_energy_range(cv[:1], weights[:1], (-2.0,), (2.0,), 50, KT) == 0.0


@pytest.mark.parametrize("cut", [1e-3, 1e3])
def test_levelling_puts_a_basin_cut_off_from_tram_at_the_deepest_level_keeping_its_shape(cut):
    """Exact Boltzmann frames of both wells of F; the shallow well (x > 0) is outside the connected
    set with its weight cut 1000-fold (a basin entered and never left, as MBAR's equations weigh
    it) or raised 1000-fold (the basin left behind). Levelling scales it so that its deepest cell
    is as deep as the other well's deepest and keeps F's shape within it; stray frames set no level."""
    grid = np.linspace(-2, 2, 4001)
    p = np.exp(-free_energy(grid) / KT)
    rng = np.random.default_rng(2)
    cv = rng.choice(grid, size=200000, p=p / p.sum())[:, None]
    outside = cv[:, 0] > 0
    weights = np.where(outside, cut, 1.0)
    weights /= weights.sum()
    level = levelled_weights(cv, weights, ~outside, (-2.0,), (2.0,), 10)
    edges = np.linspace(-2, 2, SUPPORT_BINS + 1)
    with np.errstate(divide="ignore"):
        F = -KT * np.log(np.histogram(cv[:, 0], edges, weights=level)[0])
    left, right = edges[1:] <= 0, edges[:-1] >= 0
    assert F[right].min() / KT == pytest.approx(F[left].min() / KT, abs=1e-9)
    centres = 0.5 * (edges[1:] + edges[:-1])
    cells = right & (free_energy(centres) - free_energy(centres).min() < 5 * KT)
    exact = -KT * np.log(np.histogram(grid, edges, weights=p)[0])
    shape = (F - exact)[cells]
    assert np.ptp(shape) / KT < 0.1
    assert level.sum() == pytest.approx(1.0)
    # every frame connected, or only stray frames outside (fewer than min_frames in any cell):
    # the weights stay as they are
    assert levelled_weights(cv, weights, np.ones(len(cv), bool), (-2.0,), (2.0,), 10) is weights
    stray = outside & (np.cumsum(outside) <= 5)
    assert levelled_weights(cv, weights, ~stray, (-2.0,), (2.0,), 10) is weights


def test_levelling_leaves_the_frames_of_briefly_visited_cells_at_their_weight():
    """Beside a basin cut off from TRAM (x > 0, its weight cut 1000-fold), 3 frames in each of a
    dozen cells of the other well are outside too (Markov states visited for less than TRAM's lag,
    or a saddle crossed on the way in). Levelled by the basin's factor they would be 1000-fold
    deep spikes in the learning weights; they keep their weight, and the basin is levelled."""
    grid = np.linspace(-2, 2, 4001)
    p = np.exp(-free_energy(grid) / KT)
    rng = np.random.default_rng(3)
    cv = rng.choice(grid, size=200000, p=p / p.sum())[:, None]
    basin = cv[:, 0] > 0
    edges = np.linspace(-2, 2, SUPPORT_BINS + 1)
    cell = np.digitize(cv[:, 0], edges[1:-1])
    brief = np.zeros(len(cv), bool)
    for c in range(2, 14):  # the left well's cells
        brief[np.flatnonzero(cell == c)[:3]] = True
    weights = np.where(basin, 1e-3, 1.0)
    weights /= weights.sum()
    level = levelled_weights(cv, weights, ~(basin | brief), (-2.0,), (2.0,), 10)
    ratio = level / weights
    assert np.allclose(ratio[brief], ratio[~basin & ~brief][0]) and np.allclose(ratio[~basin], ratio[~basin][0])
    held = basin & (np.bincount(cell[basin], minlength=SUPPORT_BINS)[cell] >= 10)
    assert held.sum() > 0.99 * basin.sum()  # all but the basin's rim, a few frames a cell, take the level
    assert np.allclose(ratio[held], ratio[held][0]) and ratio[held][0] / ratio[~basin][0] > 100
    with np.errstate(divide="ignore"):
        F = -KT * np.log(np.histogram(cv[:, 0], edges, weights=level)[0])
    assert F[edges[:-1] >= 0].min() / KT == pytest.approx(F[edges[1:] <= 0].min() / KT, abs=0.01)


def test_levelling_keeps_a_remembered_basin_level_once_tram_connects_it():
    """A basin TRAM has just connected (x > 0: every frame inside its set, after a few re-crossings
    at the saddle) while it still weighs it 1000-fold too light. As it is, the basin keeps that
    weight; with its cells remembered (guidance.level_memory) it is levelled as if still outside:
    its deepest cell as deep as the other well's deepest, its shape kept."""
    grid = np.linspace(-2, 2, 4001)
    p = np.exp(-free_energy(grid) / KT)
    rng = np.random.default_rng(4)
    cv = rng.choice(grid, size=200000, p=p / p.sum())[:, None]
    basin = cv[:, 0] >= 0  # the remembered cells' frames
    weights = np.where(basin, 1e-3, 1.0)
    weights /= weights.sum()
    connected = np.ones(len(cv), bool)
    assert levelled_weights(cv, weights, connected, (-2.0,), (2.0,), 10) is weights
    edges = np.linspace(-2, 2, SUPPORT_BINS + 1)
    remembered = np.flatnonzero(edges[:-1] >= 0).tolist()
    level = levelled_weights(cv, weights, connected, (-2.0,), (2.0,), 10, remembered=remembered)
    with np.errstate(divide="ignore"):
        F = -KT * np.log(np.histogram(cv[:, 0], edges, weights=level)[0])
    right, left = edges[:-1] >= 0, edges[1:] <= 0
    assert F[right].min() / KT == pytest.approx(F[left].min() / KT, abs=1e-9)
    centres = 0.5 * (edges[1:] + edges[:-1])
    cells = right & (free_energy(centres) - free_energy(centres).min() < 5 * KT)
    exact = -KT * np.log(np.histogram(grid, edges, weights=p)[0])
    assert np.ptp((F - exact)[cells]) / KT < 0.1


def test_remembered_cells_keep_a_held_cell_for_level_memory_rounds():
    """A cell held outside TRAM's set at round 3 (12 frames, min_frames 10) is remembered through
    round 3 + level_memory, connected or not, and dropped after; held again, its round moves on.
    With level_memory 0 only the round's own held cells are levelled. The 40 connected frames
    and a cell of 9 outside frames are never held."""
    cells, frames = np.array([5, 20, 26]), [40, 12, 9]
    cv = np.repeat(-2 + (cells + 0.5) * 4 / SUPPORT_BINS, frames)[:, None]
    connected = np.arange(len(cv)) < 40
    remember = lambda inside, k, memory, earlier: remembered_cells(cv, inside, (-2.0,), (2.0,), 10, k, memory, earlier)  # noqa: E731
    held = remember(connected, 3, 2, {})
    assert held == {20: 3}
    joined = np.ones(len(cv), bool)
    assert remember(joined, 4, 2, held) == remember(joined, 5, 2, held) == {20: 3}
    assert remember(joined, 6, 2, held) == {}
    assert remember(joined, 4, 0, held) == {}
    assert remember(connected, 5, 2, held) == {20: 5}


def test_held_outside_is_the_outside_frames_of_cells_with_min_frames_of_them():
    """Of the frames outside TRAM's connected set, those in a cell (1/32 of the range) with at
    least min_frames (10) of them are a held basin; 9 alone in a cell are not, nor 8 beside 22
    connected ones (counted over all frames, that cell would pass)."""
    cells, frames = np.array([5, 20, 21, 22]), [40, 10, 9, 30]
    cv = np.repeat(-2 + (cells + 0.5) * 4 / SUPPORT_BINS, frames)[:, None]
    connected = np.concatenate([np.ones(40, bool), np.zeros(10, bool), np.zeros(9, bool), np.arange(30) < 22])
    held = held_outside(cv, connected, (-2.0,), (2.0,), 10)
    assert np.array_equal(held, np.concatenate([np.zeros(40, bool), np.ones(10, bool), np.zeros(39, bool)]))
    assert held_outside(cv, connected, (-2.0,), (2.0,), 11).sum() == 0
    assert not held_outside(cv, np.ones(len(cv), bool), (-2.0,), (2.0,), 1).any()


@pytest.mark.parametrize("edge", [-5.0, 5.0])
@pytest.mark.parametrize("gamma", [4.0, 8.0])
def test_the_bias_fills_basins_and_barrier_to_the_well_tempered_level_despite_an_edge_artefact(gamma, edge):
    """V = -(1 - 1/gamma) F on a 10 kT double well, trusted for |x| < 1.4, with a 5 kT dip or
    bump near the trust edge (a basis function the data pin poorly): the applied bias leaves the
    barrier at 10 kT / gamma above both basins, is never negative or above the cap, and is off
    untrusted. The bump rises 0.8-1.4 kT above V's value in the basins, so a fill counted down
    from V's maximum would leave the basins and the barrier that much short."""
    x = np.linspace(-1.6, 1.6, 321)
    F = 10 * KT * (x**2 - 1) ** 2
    sigma = np.clip((1.4 - np.abs(x)) / 0.1, 0.0, 1.0)
    V = -(1 - 1 / gamma) * F + edge * KT * np.exp(-(((np.abs(x) - 1.3) / 0.05) ** 2))
    cap = (1 - 1 / gamma) * np.ptp(F[sigma >= 0.5])
    applied = fill(V, sigma, cap, F)
    G = F + applied
    basins = np.abs(np.abs(x) - 1.0) < 0.15
    assert (G[np.argmin(np.abs(x))] - G[basins].min()) / KT == pytest.approx(10 / gamma, abs=0.05)
    assert np.ptp(G[basins]) / KT < 10 / gamma * 0.2  # the basins are filled from their bottoms
    assert applied.min() >= 0 and applied.max() <= cap + 1e-9 and np.all(applied[sigma == 0] == 0)


def test_trust_is_one_below_e0_zero_above_e1_and_smooth_between():
    eps = np.array([0.0, 1.0, 1.5, 2.75, 4.0, 9.0])
    sigma = trust(eps, 1.5, 4.0)
    assert sigma.tolist()[:3] == [1.0, 1.0, 1.0] and sigma[3] == pytest.approx(0.5) and sigma[4:].tolist() == [0.0, 0.0]
    fine = trust(np.linspace(1.5, 4.0, 200), 1.5, 4.0)
    assert np.all(np.diff(fine) <= 0) and np.abs(np.diff(fine)).max() < 0.02


def test_data_support_marks_only_where_frames_are():
    rng = np.random.default_rng(1)
    cv = rng.normal(1.0, 0.2, size=(5000, 1))  # one basin, near x = 1
    support = data_support(cv, (-2.0,), (2.0,), (False,), min_frames=10)
    assert support(np.array([[1.0]]))[0] == pytest.approx(1.0)
    assert support(np.array([[-1.0]]))[0] == 0.0  # the other basin: never visited
    values = support(np.linspace(-2, 2, 401)[:, None])
    assert values.min() >= 0 and values.max() <= 1 and np.abs(np.diff(values)).max() < 0.2


def test_data_support_holds_the_outermost_cell_to_the_box_edge():
    width = 4.0 / SUPPORT_BINS
    cv = np.full((5, 1), 2.0 - width / 2)  # half of min_frames in the last cell, none in the one before
    support = data_support(cv, (-2.0,), (2.0,), (False,), min_frames=10)
    held = support(np.array([[2.0 - width / 2]]))[0]
    assert 0 < held < 1
    # a line through the last two cell centres would climb past the frames' own cell
    assert support(np.array([[2.0], [2.5]])).tolist() == pytest.approx([held, held])


def test_data_support_wraps_periodic_cvs():
    cv = np.concatenate([np.full((50, 1), -3.1), np.full((50, 1), 3.1)])
    support = data_support(cv, (-np.pi,), (np.pi,), (True,), min_frames=10)
    assert support(np.array([[np.pi - 1e-6], [-np.pi + 1e-6]])).min() > 0.9


def test_starts_reseed_the_frontier_and_keep_the_rest():
    last = np.arange(8) * 10 + 9  # each walker's own last frame, all in cell 0
    scores = np.zeros(80)
    scores[[3, 33, 55, 71]] = 1.0  # the frontier, in cell 1
    cells = np.zeros(80, dtype=int)
    cells[[3, 33, 55, 71]] = 1
    quotas = np.array([4, 4])
    frames, seeded = choose_starts(last, scores, cells, quotas, 0.5, np.random.default_rng(0))
    assert seeded.sum() == 4
    assert set(frames[seeded]) == {3, 33, 55, 71}
    assert (frames[~seeded] == last[~seeded]).all()
    # within a cell at its quota, frontier frames still replace the walkers least at the frontier
    frames, seeded = choose_starts(last, scores, np.zeros(80, dtype=int), np.array([8]), 0.5,
                                   np.random.default_rng(0))
    assert seeded.sum() == 4 and set(frames[seeded]) == {3, 33, 55, 71}
    # the walkers whose last frames are at the frontier keep going; the others make room
    scores[last[[2, 6]]] = 0.9
    frames, seeded = choose_starts(last, scores, cells, quotas, 0.5, np.random.default_rng(0))
    assert not seeded[[2, 6]].any() and (frames[[2, 6]] == last[[2, 6]]).all()
    assert frontier_scores(np.array([0.0, 2.0]), np.array([100, 0])).tolist() == [0.0, 1.0]


def test_no_walker_starts_outside_the_cv_domain_and_one_outside_moves_first():
    """Frames past a non-periodic CV's edge score -1: never a start, however high their frontier
    score would be; a walker that ended there is the first to be moved back in."""
    last = np.arange(8) * 10 + 9
    scores = np.full(80, 0.1)
    scores[[3, 33]] = -1.0  # outside the box
    scores[[55, 71]] = 1.0  # the frontier inside it
    scores[last[5]] = -1.0  # walker 5 ended outside
    cells = np.zeros(80, dtype=int)
    for seed in range(20):
        frames, seeded = choose_starts(last, scores, cells, np.array([8]), 0.5, np.random.default_rng(seed))
        assert not np.isin(frames[seeded], [3, 33]).any() and seeded[5]
        assert set(frames[seeded]) == {55, 71}
    # at most the fraction, rounded down: 6 walkers at 0.25 re-seed 1, not 2
    frames, seeded = choose_starts(np.arange(6), np.repeat([0.0, 1.0], 6), np.zeros(12, dtype=int), np.array([12]),
                                   0.25, np.random.default_rng(0))
    assert seeded.sum() == 1


def test_starts_do_not_herd_walkers_into_a_new_basin():
    """The herding that once emptied the basin left behind: a basin just entered is the
    frontier, but restarts fill it only up to its share of the target, and never take the
    last walkers from the other basin."""
    rng = np.random.default_rng(1)
    cells = np.repeat([0, 1], 100)  # frames 0-99 in the old basin, 100-199 in the new one
    scores = np.where(cells == 1, 1.0, 0.1)
    last = np.concatenate([np.arange(14) * 7, [150, 160]])  # 14 walkers in the old basin, 2 new
    quotas = cell_quotas(np.array([0, 0, 1, 1]), np.array([1.0, 1.0, 0.7, 0.7]), 2, 16)
    assert quotas.tolist() == [10, 7]
    frames, seeded = choose_starts(last, scores, cells, quotas, 0.5, rng)
    assert np.bincount(cells[frames], minlength=2).tolist() == [10, 6]  # 4 moved, not 8
    assert seeded.sum() == 4 and (cells[frames[seeded]] == 1).all()
    # once the old basin is down to its share, nothing moves out of it any more
    frames, seeded = choose_starts(frames, scores, cells, quotas, 0.5, rng)
    assert not seeded.any()
    # an over-full new basin gives walkers back to the old one
    last = np.concatenate([[5, 6], 100 + np.arange(14) * 7])
    frames, seeded = choose_starts(last, scores, cells, quotas, 0.5, rng)
    assert np.bincount(cells[frames], minlength=2).tolist() == [9, 7]


def test_quotas_follow_the_target_with_one_walker_at_least():
    q = cell_quotas(np.array([0, 1, 2, 2]), np.array([1.0, 1e-9, 1.0, 1.0]), 4, 8)
    assert q.tolist() == [3, 1, 6, 1]
