"""The bead prior (cgflow.models.priors) fitted from frames whose bond, angle and dihedral
distributions are known: it must give back the force constants and dihedral terms they were
drawn with, not merely something MD with it reproduces."""

from __future__ import annotations

import numpy as np

from cgflow.models.priors import Prior
from tests.unit.test_cg_difftre_training import A0, B0, CHAIN, KA, KB_BOND, TRUE, _chain_frames, kT


def test_the_prior_fitted_to_exact_frames_recovers_their_bond_angle_and_dihedral_terms():
    x = _chain_frames(40_000, np.random.default_rng(0))
    prior = Prior.fit(x, list(zip(CHAIN[:-1], CHAIN[1:])), kT, n_harmonics=3, terms=("bonds", "angles", "dihedrals"))
    kb, b0, ka, a0 = (t.detach().numpy() for t in (prior.kb, prior.b0, prior.ka, prior.a0))
    np.testing.assert_allclose(kb, KB_BOND, rtol=0.05)
    np.testing.assert_allclose(b0, B0, atol=2e-3)
    np.testing.assert_allclose(ka, KA, rtol=0.05)  # measured 2.5-3.4 % high
    np.testing.assert_allclose(a0, A0, atol=0.02)
    # rows: the phi and psi dihedrals; columns: cos 1..3, sin 1..3 (kJ/mol); measured 0.06 off at most
    for row, (a, b) in zip(prior.dih.numpy(), TRUE.values()):
        assert abs(row[0] - a) < 0.3 and abs(row[3] - b) < 0.3, row
