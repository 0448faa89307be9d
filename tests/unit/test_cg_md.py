"""CG Langevin MD in torch: Boltzmann statistics, blow-up detection, trajectory files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.sampling.cg_md import KB, CGBlowUp, langevin_md, save_trajectory


class Harmonic(torch.nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return 0.5 * self.k * (x**2).sum((-1, -2))


def test_baoab_samples_the_harmonic_boltzmann_variance():
    T, k = 300.0, 500.0
    x0 = torch.zeros(256, 2, 3, dtype=torch.float64)
    traj = langevin_md(Harmonic(k), x0, [12.0, 12.0], T, 0.002, 3000, friction=5.0, report_interval=10,
                       generator=torch.Generator().manual_seed(1))
    var = traj.positions[50:].var().item()
    assert var == pytest.approx(KB * T / k, rel=0.03)


def test_blow_up_fails_with_a_clear_message():
    x0 = torch.full((4, 2, 3), 0.1, dtype=torch.float64)
    with pytest.raises(CGBlowUp, match="lower the CG time step"):
        langevin_md(Harmonic(5e5), x0, [1.0, 1.0], 300.0, 0.02, 200, generator=torch.Generator().manual_seed(0))


def test_repeatable_and_saved_as_npz(tmp_path):
    x0 = torch.zeros(3, 2, 3, dtype=torch.float64)
    run = lambda: langevin_md(Harmonic(100.0), x0, [12.0, 12.0], 300.0, 0.002, 50, report_interval=10,  # noqa: E731
                              generator=torch.Generator().manual_seed(7))
    a, b = run(), run()
    assert torch.equal(a.positions, b.positions)
    save_trajectory(a, tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz") as data:
        assert data["positions"].shape == (15, 2, 3)


def test_long_cg_md_logs_its_progress(monkeypatch, caplog):
    import cgflow.sampling.cg_md as cg_md

    monkeypatch.setattr(cg_md, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level("INFO", logger="cgflow.sampling.cg_md"):
        langevin_md(Harmonic(100.0), torch.zeros(3, 2, 3, dtype=torch.float64), [12.0, 12.0], 300.0, 0.002, 50,
                    report_interval=10, generator=torch.Generator().manual_seed(7))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CG MD:")]
    assert [line.split()[2] for line in lines] == ["10/50", "20/50", "30/50", "40/50", "50/50"]
