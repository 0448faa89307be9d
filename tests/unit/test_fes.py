"""Free-energy surfaces from exact samples of known densities: estimates, bootstrap errors,
reweighting, comparison with a reference, and the fes.csv round trip."""

import numpy as np
import pytest

from cgflow.analysis.fes import (
    FES,
    MIN_BLOCKS,
    _sub_blocks,
    bin_free_energy,
    compare_to_reference,
    fes_frame,
    fes_from_frame,
    histogram_fes,
    read_fes_csv,
    resampled_blocks,
    write_fes_csv,
)

KT = 2.494
EDGES = np.linspace(-2.0, 2.0, 41)
FINE = np.linspace(-2.0, 2.0, 4001)  # 100 fine cells per bin: bin masses are exact sums


def double_well(x):
    return 3.0 * KT * (x**2 - 1.0) ** 2


def sample(energy, n, rng, fine=FINE):
    """Exact samples of the density ∝ exp(-energy/kT), piecewise constant on the fine cells."""
    mid = 0.5 * (fine[1:] + fine[:-1])
    p = np.exp(-(energy(mid) - np.min(energy(mid))) / KT)
    cdf = np.cumsum(p) / p.sum()
    cell = np.minimum(np.searchsorted(cdf, rng.random(n)), cdf.size - 1)
    return fine[cell] + rng.random(n) * np.diff(fine)[cell]


def exact_fes(energy, edges=EDGES, fine=FINE):
    mid = 0.5 * (fine[1:] + fine[:-1])
    p = np.exp(-(energy(mid) - np.min(energy(mid))) / KT) * np.diff(fine)
    cell_bin = np.searchsorted(edges, mid) - 1
    mass = np.bincount(cell_bin, weights=p, minlength=edges.size - 1) / p.sum()
    F = -KT * np.log(mass / np.diff(edges))
    return F - F.min()


def aligned_error(F, F_exact, region):
    diff = F[region] - F_exact[region]
    return diff - diff.mean()


def test_exact_samples_give_exact_fes_and_honest_errors():
    rng = np.random.default_rng(1)
    n = 100_000
    fes = histogram_fes(sample(double_well, n, rng), [EDGES], KT, blocks=np.arange(n) % 20)
    F_exact = exact_fes(double_well)
    region = F_exact < 4 * KT
    err = aligned_error(fes.F, F_exact, region)
    assert np.sqrt(np.mean(err**2)) / KT < 0.1
    within = np.mean(np.abs(err) < 2 * fes.F_err[region])
    assert 0.8 <= within <= 1.0
    assert fes.counts.sum() == n and fes.n_eff == pytest.approx(n)
    assert np.nanmin(fes.F) == 0.0
    assert np.all(fes.F_err[region] > 0)


def test_reweighted_biased_samples_recover_unbiased_fes():
    rng = np.random.default_rng(2)
    edges, fine = np.linspace(-1.6, 1.6, 33), np.linspace(-1.6, 1.6, 3201)

    def bias(x):
        return -0.6 * double_well(x)

    x = sample(lambda x: double_well(x) + bias(x), 100_000, rng, fine)
    weights = np.exp(bias(x) / KT - np.max(bias(x) / KT))
    fes = histogram_fes(x, [edges], KT, weights=weights, blocks=np.arange(x.size) % 10)
    F_exact = exact_fes(double_well, edges, fine)
    region = F_exact < 4 * KT
    assert np.sqrt(np.mean(aligned_error(fes.F, F_exact, region) ** 2)) / KT < 0.1
    unweighted = histogram_fes(x, [edges], KT)
    assert np.sqrt(np.mean(aligned_error(unweighted.F, F_exact, region) ** 2)) / KT > 0.5
    assert fes.n_eff < 0.9 * x.size


def test_a_surface_known_at_points_is_integrated_over_each_bin():
    """A free energy given on a grid (metadynamics' getFreeEnergy) becomes each bin's
    -kT ln <exp(-F/kT)>_bin, as the exact PMF and the histograms are; its bin-centre values
    differ from that by more than the tolerance on these 0.1-wide bins, where F rises up to
    4 kJ/mol across one."""
    grid = np.linspace(-2.0, 2.0, 801)
    F_bin = bin_free_energy([grid], double_well(grid), [EDGES], KT)
    exact = exact_fes(double_well)
    assert np.abs((F_bin - F_bin.min()) - exact).max() < 0.02
    centres = double_well(0.5 * (EDGES[1:] + EDGES[:-1]))
    assert np.abs((centres - centres.min()) - exact).max() > 0.1

    # two CVs: a separable surface is the sum of its two one-dimensional bin free energies
    y = np.linspace(-1.0, 1.0, 401)
    edges_y = np.linspace(-1.0, 1.0, 11)
    tilt = lambda v: 4.0 * KT * v**2 + 2.0 * v  # noqa: E731
    F2 = bin_free_energy([grid, y], double_well(grid)[:, None] + tilt(y)[None, :], [EDGES, edges_y], KT)
    sum_1d = F_bin[:, None] + bin_free_energy([y], tilt(y), [edges_y], KT)[None, :]
    assert F2.shape == (40, 10)
    np.testing.assert_allclose(F2, sum_1d, atol=1e-9)


def test_compare_identical_surfaces_up_to_a_shift():
    rng = np.random.default_rng(3)
    fes = histogram_fes(sample(double_well, 50_000, rng), [EDGES], KT)
    result = compare_to_reference(fes, fes.F + 7.0, KT)
    assert result["rmse_kT"] == pytest.approx(0.0, abs=1e-12)
    assert result["coverage"] == 1.0
    assert result["n_bins"] == np.sum(fes.F < 6 * KT)


def test_compare_known_perturbation():
    F = np.linspace(0.0, 3.0, 20)
    fes = FES(edges=(np.linspace(0.0, 1.0, 21),), F=F, F_err=np.zeros(20))
    perturbation = np.where(np.arange(20) % 2 == 0, KT, 0.0)
    result = compare_to_reference(fes, F + perturbation, KT, cutoff_kT=10.0)
    assert result["rmse_kT"] == pytest.approx(0.5)
    assert result == {"rmse_kT": pytest.approx(0.5), "coverage": 1.0, "n_bins": 20, "outside_mass": 0.0}


def test_compare_reports_the_mass_the_shift_hides_outside_the_region():
    # bins of widths 1, 1, 2, 1: the estimate matches the reference on the first two, and puts as
    # much probability density in the 2-wide bin, where the reference has no data, plus a bin above
    # the cutoff: (2 + 1 e^-7) / (1 + 1 + 2 + e^-7) of its mass is outside
    edges = (np.array([0.0, 1.0, 2.0, 4.0, 5.0]),)
    fes = FES(edges=edges, F=np.array([0.0, 0.0, 0.0, 7 * KT]), F_err=np.zeros(4))
    result = compare_to_reference(fes, np.array([0.0, 0.0, np.nan, 7 * KT]), KT)
    assert result["rmse_kT"] == pytest.approx(0.0, abs=1e-12)
    assert result["n_bins"] == 2
    outside = (2 + np.exp(-7)) / (4 + np.exp(-7))
    assert result["outside_mass"] == pytest.approx(outside, rel=1e-12)
    unvisited = compare_to_reference(FES(edges=edges, F=np.full(4, np.nan), F_err=np.zeros(4)), fes.F, KT)
    assert np.isnan(unvisited["rmse_kT"]) and np.isnan(unvisited["outside_mass"])


def test_compare_one_well_run_is_penalised_not_dropped():
    rng = np.random.default_rng(4)
    left_only = sample(lambda x: np.where(x < 0, double_well(x), np.inf), 20_000, rng)
    fes = histogram_fes(left_only, [EDGES], KT)
    F_exact = exact_fes(double_well)
    result = compare_to_reference(fes, F_exact, KT)
    assert 0.3 < result["coverage"] < 0.7
    assert result["rmse_kT"] > 2.0
    visited = np.isfinite(fes.F) & (F_exact < 6 * KT)
    assert np.sqrt(np.mean(aligned_error(fes.F, F_exact, visited) ** 2)) / KT < 0.3


def test_detection_limit_is_the_f_of_one_sample():
    fes = histogram_fes(np.array([0.05, 0.15, 0.15, 0.15]), [np.array([0.0, 0.1, 0.2, 0.3])], KT)
    assert fes.F_detect[0] == pytest.approx(fes.F[0])
    assert fes.F_detect[2] == pytest.approx(fes.F[0])
    assert fes.F[1] == 0.0 and np.isnan(fes.F[2]) and np.isnan(fes.F_err[2])
    assert fes.F[0] == pytest.approx(KT * np.log(3.0))


def test_unvisited_bins_stay_nan_through_csv(tmp_path):
    rng = np.random.default_rng(5)
    edges = np.linspace(-1.0, 2.0, 31)
    fes = histogram_fes(rng.random(5_000), [edges], KT)
    reference = np.abs(fes.centers[0] - 0.55)
    path = tmp_path / "fes.csv"
    write_fes_csv(fes_frame(fes, ["x"], reference=reference), path)
    lines = path.read_text().splitlines()
    assert lines[0] == "x,F_kJmol,F_err_kJmol,F_ref_kJmol"
    assert lines[1].split(",")[1:3] == ["", ""]
    back = read_fes_csv(path, ["x"])
    assert np.array_equal(np.isnan(back.F), np.isnan(fes.F))
    assert np.all(np.isnan(fes.F[:10])) and np.all(np.isnan(fes.F[20:]))
    np.testing.assert_allclose(back.F, fes.F, equal_nan=True)
    np.testing.assert_allclose(back.F_err, fes.F_err, equal_nan=True)
    np.testing.assert_allclose(back.edges[0], edges, atol=1e-12)
    np.testing.assert_allclose(read_fes_csv(path, ["x"], column="F_ref_kJmol").F, reference)


def test_two_dimensional_separable_gaussian():
    from scipy.special import ndtr

    rng = np.random.default_rng(6)
    sx, sy, n = 0.5, 1.0, 200_000
    ex, ey = np.linspace(-1.5, 1.5, 25), np.linspace(-3.0, 3.0, 21)
    cv = np.column_stack([rng.normal(0, sx, n), rng.normal(0, sy, n)])
    fes = histogram_fes(cv, [ex, ey], KT, blocks=np.arange(n) % 16)
    mass = np.outer(np.diff(ndtr(ex / sx)), np.diff(ndtr(ey / sy)))
    F_exact = -KT * np.log(mass / np.outer(np.diff(ex), np.diff(ey)))
    F_exact -= F_exact.min()
    region = F_exact < 3 * KT
    assert fes.F.shape == (24, 20)
    err = aligned_error(fes.F, F_exact, region)
    assert np.sqrt(np.mean(err**2)) / KT < 0.1
    assert 0.8 <= np.mean(np.abs(err) < 2 * fes.F_err[region]) <= 1.0

    frame = fes_frame(fes, ["phi", "psi"])
    np.testing.assert_allclose(frame["phi"], np.repeat(fes.centers[0], 20))
    np.testing.assert_allclose(frame["psi"], np.tile(fes.centers[1], 24))
    back = fes_from_frame(frame.sample(frac=1.0, random_state=0), ["phi", "psi"])
    np.testing.assert_allclose(back.F, fes.F, equal_nan=True)
    for got, want in zip(back.edges, (ex, ey)):
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_sub_blocks_are_contiguous_pieces_of_each_block():
    labels = np.repeat([7, 3, 9], 30)[np.random.default_rng(0).permutation(90)]
    codes = _sub_blocks(labels)
    assert np.unique(codes).size == 9 >= MIN_BLOCKS
    for b in np.unique(labels):
        within = codes[labels == b]
        assert np.all(np.diff(within) >= 0) and np.unique(within).size == 3
    assert np.array_equal(_sub_blocks(np.arange(10) % 10), np.arange(10))


def test_blocks_are_resampled_within_their_stratum():
    labels, strata = np.tile(np.arange(10), 3), np.repeat([4, 1, 7], 10)
    codes, multiplicity = resampled_blocks(labels, strata, 50, np.random.default_rng(0))
    assert multiplicity.shape == (50, 30) and np.unique(codes).size == 30
    for stratum in (4, 1, 7):
        own = np.unique(codes[strata == stratum])
        assert np.all(multiplicity[:, own].sum(axis=1) == 10) and multiplicity[:, own].std() > 0
    codes, multiplicity = resampled_blocks(np.zeros(40), np.repeat([0, 1], 20), 5, np.random.default_rng(0))
    assert np.unique(codes[:20]).size == np.unique(codes[20:]).size == MIN_BLOCKS  # one block per stratum, split


def test_reweighted_rounds_get_errors_of_their_true_spread():
    """An unbiased round and a biased one (V = -0.8 U), 8 walkers each, weighted by MBAR: the
    bootstrap that resamples walkers within each round matches the spread of F over repeated
    campaigns; resampling them across rounds mixes biased and unbiased walkers and overstates it."""
    from cgflow.analysis.reweight import mbar_weights

    def bias(cv):
        return -0.8 * double_well(np.asarray(cv)[:, 0])

    walkers, n, repeats = 8, 400, 40
    rounds = np.repeat([0, 1], walkers * n)
    walker = np.tile(np.repeat(np.arange(walkers), n), 2)
    F, by_round, across = [], [], []
    for repeat in range(repeats):
        rng = np.random.default_rng(repeat)
        cv = np.concatenate([sample(double_well, walkers * n, rng),
                             sample(lambda x: double_well(x) + bias(x[:, None]), walkers * n, rng)])
        w = mbar_weights(cv[:, None], rounds, [None, bias], KT).weights
        fes = histogram_fes(cv, [EDGES], KT, weights=w, blocks=walker, strata=rounds, seed=repeat)
        mass = np.histogram(cv, EDGES, weights=w)[0]
        with np.errstate(divide="ignore"):
            F.append(-KT * np.log(mass / mass.sum()))  # unshifted, as the bootstrap's replicas are
        by_round.append(fes.F_err)
        across.append(histogram_fes(cv, [EDGES], KT, weights=w, blocks=rounds * walkers + walker, seed=repeat).F_err)
    F = np.array(F)
    seen = np.all(np.isfinite(F), axis=0)
    spread = np.std(F[:, seen], axis=0, ddof=1)
    ratio = np.median(np.mean(np.array(by_round)[:, seen], axis=0) / spread)
    assert 0.7 < ratio < 1.4
    assert np.median(np.mean(np.array(across)[:, seen], axis=0) / spread) > 1.4 * ratio


def test_single_correlated_walker_gets_block_errors():
    from scipy.signal import lfilter

    rng = np.random.default_rng(7)
    phi, n, burn = 0.98, 40_000, 2_000
    edges = np.linspace(-2.5, 2.5, 21)
    estimates, reported, naive = [], [], []
    for _ in range(16):
        x = lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], rng.normal(size=n + burn))[burn:]
        fes = histogram_fes(x, [edges], KT)
        estimates.append(fes.F)
        reported.append(fes.F_err)
        naive.append(histogram_fes(x, [edges], KT, blocks=np.arange(n), n_bootstrap=50).F_err)
    core = np.abs(0.5 * (edges[1:] + edges[:-1])) < 1.5
    actual = np.std(np.array(estimates), axis=0, ddof=1)[core]
    ratio = np.mean(np.array(reported)[:, core], axis=0) / actual
    assert 0.5 < np.median(ratio) < 2.0
    assert np.median(np.mean(np.array(naive)[:, core], axis=0) / actual) < 0.45


def test_the_fes_plot_hatches_the_bins_outside_the_connected_set():
    """Hatched on F and on F − reference, where the error shows; not on the reference, which has none."""
    from cgflow.analysis.plots import _plot_fes_2d

    x, y = np.meshgrid(np.linspace(-1, 1, 12), np.linspace(-1, 1, 10), indexing="ij")
    F = 5.0 * (x**2 + y**2)
    frame = fes_frame(FES(edges=(np.linspace(-1.1, 1.1, 13), np.linspace(-1.1, 1.1, 11)), F=F,
                          F_err=np.zeros_like(F)), ["x", "y"], F)
    frame["connected_share"] = np.where(frame["x"] > 0.5, 0.1, 1.0)

    def hatched(fig):
        panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        return [any(any(getattr(c, "hatches", None) or [None]) for c in ax.collections) for ax in panels]

    assert hatched(_plot_fes_2d(frame, ["x", "y"])) == [True, False, True]
    frame["connected_share"] = 1.0
    assert hatched(_plot_fes_2d(frame, ["x", "y"])) == [False, False, False]


def test_the_1d_fes_plot_crosses_the_bins_outside_the_connected_set():
    from cgflow.analysis.plots import OUTSIDE_LABEL, _plot_fes_1d

    edges = np.linspace(-1.05, 1.05, 21)
    x = 0.5 * (edges[1:] + edges[:-1])
    frame = fes_frame(FES(edges=(edges,), F=5.0 * x**2, F_err=np.zeros(20)), ["x"])
    frame["connected_share"] = np.where(x < -0.5, 0.0, 1.0)
    crossed = [line for line in _plot_fes_1d(frame, "x").axes[0].lines if line.get_label() == OUTSIDE_LABEL]
    assert len(crossed) == 1 and np.allclose(crossed[0].get_xdata(), x[x < -0.5])
