"""Henderson check: IBI-by-reweighting (DiffTRe with a tabulated pair potential) fitted to the RDF
of an OpenMM Lennard-Jones fluid recovers the LJ pair potential in the well region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cgflow.models.tabulated_pair import TabulatedPair, boltzmann_inversion
from cgflow.sampling.cg_md import KB, langevin_md
from cgflow.systems.lj_fluid import LJFluid
from cgflow.training.difftre import DiffTRe
from cgflow.training.observables import rdf_frames


def henderson(n_fg_frames=1000, cg_steps=2000, iterations=6, seed=3):
    """Returns (nodes nm, learnt u, exact u, Boltzmann-inverted u, kT, well mask)."""
    torch.set_num_threads(1)
    fluid = LJFluid(n_particles=64, density=0.5)
    T = 1.5 * fluid.epsilon / KB  # T* = 1.5, rho* = 0.5: a dense supercritical fluid
    kT = KB * T
    pos = fluid.sample(T, n_frames=n_fg_frames, stride=50, seed=seed)
    dr, rc = 0.01, fluid.r_cut
    nodes = np.arange(0.2, rc + 1e-9, dr)
    nodes = nodes - (nodes[-1] - rc)
    edges = torch.as_tensor(np.concatenate([nodes - dr / 2, [nodes[-1] + dr / 2]]))
    g_fg = rdf_frames(torch.as_tensor(pos), edges, fluid.box).mean(0)
    u_bi = boltzmann_inversion(nodes, g_fg.numpy(), kT)
    model = TabulatedPair(nodes, u_bi, box=fluid.box)
    state = {"x": torch.as_tensor(pos[-8:]), "gen": torch.Generator().manual_seed(seed)}

    def simulate(m):
        tr = langevin_md(m, state["x"], fluid.mass, T, 0.01, cg_steps, friction=5.0, report_interval=20,
                         box=fluid.box, generator=state["gen"])
        state["x"] = tr.positions[-1]
        return tr.positions[len(tr.positions) // 5:].reshape(-1, fluid.n_particles, 3)

    trainer = DiffTRe(model, simulate, {"rdf": lambda x: rdf_frames(x, edges, fluid.box)}, {"rdf": g_fg}, kT,
                      update="ibi", max_epochs=iterations, threshold=0.9)
    trainer.fit()
    with torch.no_grad():
        u = model.pair(torch.as_tensor(nodes)).numpy()
    well = (nodes >= 1.0 * fluid.sigma) & (nodes <= 1.6 * fluid.sigma)
    return nodes, u, fluid.pair_energy(nodes), u_bi, kT, well, trainer


@pytest.mark.slow
def test_ibi_recovers_the_lj_pair_potential_in_the_well():
    nodes, u, exact, u_bi, kT, well, trainer = henderson()
    err = np.abs(u - exact)[well].max() / kT
    err_bi = np.abs(u_bi - exact)[well].max() / kT
    assert err < 0.2, err
    assert err < err_bi  # the many-body correction was learnt, not just Boltzmann inversion
    assert trainer.history[-1]["loss"] < 0.1 * trainer.history[0]["loss"]
    assert trainer.samples.n_simulations < len(trainer.history)  # reweighting reused some simulations
