"""The unconverged-rounds warning of the final report (cgflow.analysis.report)."""

from __future__ import annotations

import logging

import pytest

from cgflow.analysis.report import warn_if_unconverged

# gap_cg_vs_policy_kT per guided round of bench campaigns (tests/benchmarks/HISTORY.md, 2026-12-06)
CONVERGED = {
    "Müller-Brown along x, 300 K (FES 0.12 kT off)": [0.1, 0.22, 0.33, 0.27, 0.36, 0.36, 0.38, 0.7, 0.7],
    "2-D double well (0.07 kT off)": [0.04, 0.14, 0.13, 0.26, 0.42, 0.63, 0.68, 0.64, 0.46, 0.47, 0.57, 0.59, 0.66,
                                      0.54, 0.58, 0.68],
    "alanine (0.20 kT off)": [0.09, 0.25, 0.22, 0.23, 0.73, 0.59, 0.84, 0.67, 0.96, 1.17, 0.67, 0.67, 0.73, 0.82,
                              0.81, 0.79, 1.0, 1.15, 1.0, 1.14, 1.1, 1.18],
}
UNCONVERGED = {
    "Müller-Brown along x, 150 K (4.7 kT off)": [0.05, 0.08, 0.19, 0.33, 4.2, 6.57, 5.86, 0.82, 3.22, 3.47, 3.99,
                                                 3.68, 4.61, 3.65, 4.3, 5.33, 4.28, 4.47, 4.43, 2.55, 3.86, 1.25,
                                                 5.02, 5.37, 2.42, 3.39, 3.37, 2.06, 3.42],
}


def rounds(gaps):
    return [{"round": k, "gap_cg_vs_policy_kT": g} for k, g in enumerate(gaps)] + [{"round": len(gaps)}]


@pytest.mark.parametrize("name", CONVERGED)
def test_a_converged_campaign_is_not_flagged(name, caplog):
    with caplog.at_level(logging.WARNING):
        assert not warn_if_unconverged(rounds(CONVERGED[name]), "summary.json")
    assert not caplog.records


@pytest.mark.parametrize("name", UNCONVERGED)
def test_rounds_that_could_not_equilibrate_are_flagged(name, caplog):
    with caplog.at_level(logging.WARNING):
        assert warn_if_unconverged(rounds(UNCONVERGED[name]), "summary.json")
    assert "3.4 kT" in caplog.text and "summary.json" in caplog.text


def test_a_campaign_without_guided_rounds_is_not_flagged():
    assert not warn_if_unconverged([{"round": 0}], "summary.json")


def test_walker_traces_draw_the_rounds_one_after_another(tmp_path, monkeypatch):
    """Each round's clock restarts at zero and its walkers start afresh: walker 0 of round 1
    must be drawn after round 0, not over it, joined to nothing."""
    import numpy as np
    import pandas as pd

    from cgflow.analysis import plots

    time_ps = np.arange(1, 11) * 0.2
    samples = pd.concat([pd.DataFrame({"round": r, "walker": w, "time_ps": time_ps, "x": r + 0.1 * w})
                         for r in (0, 1, 2) for w in (0, 1)])
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.plot_walker_traces(samples, ["x"], tmp_path / "traces.png")
    lines = figures[0].axes[0].get_lines()
    traces = [line for line in lines if len(line.get_xdata()) == len(time_ps)]
    assert len(traces) == 6  # one line per round and walker
    for line in traces:
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        r = int(round(y[0]))  # this synthetic trace's CV holds its round
        assert x.min() > r * time_ps[-1] and x.max() == pytest.approx((r + 1) * time_ps[-1])
    assert len(lines) - len(traces) == 2  # the two round boundaries
