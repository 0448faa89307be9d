"""The alanine dipeptide FG system: shipped PDB, force field, CVs and a short Langevin run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

openmm = pytest.importorskip("openmm")
md = pytest.importorskip("mdtraj")
from openmm import app, unit  # noqa: E402

from cgflow.systems.alanine import (  # noqa: E402
    HEAVY_ATOMS,
    PHI_ATOMS,
    PSI_ATOMS,
    AlanineDipeptide,
    pdb_path,
)

KJ = unit.kilojoule_per_mole


def _context(system, integrator=None):
    integrator = integrator or openmm.VerletIntegrator(0.001)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))


def _energy(system, positions) -> float:
    context = _context(system)
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)


def test_import_is_light():
    code = "import sys, cgflow.systems.alanine; print(sorted({'openmm', 'mdtraj'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pdb_loads_and_every_atom_is_templated():
    pdb = app.PDBFile(str(pdb_path()))
    assert pdb.topology.getNumAtoms() == 22
    assert [r.name for r in pdb.topology.residues()] == ["ACE", "ALA", "NME"]
    forcefield = app.ForceField("amber14-all.xml")
    assert forcefield.getUnmatchedResidues(pdb.topology) == []
    templates = forcefield.getMatchingTemplates(pdb.topology)
    assert [t.name for t in templates] == ["ACE", "ALA", "NME"]
    assert sum(len(t.atoms) for t in templates) == 22
    assert "amber14-all.xml" in pdb_path().read_text().split("ATOM")[0]  # provenance REMARK


@pytest.mark.parametrize("solvent", ["vacuum", "obc2"])
def test_system_builds_offline(solvent):
    ala = AlanineDipeptide(solvent)
    system = ala.create_system()
    assert system.getNumParticles() == ala.n_atoms == 22
    assert system.getNumConstraints() == 12  # HBonds: the 12 hydrogens
    nonbonded = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    assert nonbonded.getNonbondedMethod() == openmm.NonbondedForce.NoCutoff
    charge = sum(nonbonded.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in range(22))
    assert charge == pytest.approx(0.0, abs=1e-6)  # capped, neutral: no terminal ALA templates
    positions = ala.initial_positions()
    assert positions.shape == (22, 3) and positions.dtype == np.float64
    assert np.isfinite(_energy(system, positions))


def test_vacuum_pdb_is_the_ff14sb_minimum():
    ala = AlanineDipeptide()
    context = _context(ala.create_system())
    context.setPositions(ala.initial_positions())
    shipped = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    minimised = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(KJ)
    assert -120.0 < minimised < -60.0  # ff14SB C7eq in vacuum is about -91 kJ/mol
    assert shipped - minimised < 0.5  # already minimised (only PDB rounding left)


def test_obc2_adds_a_solvation_term():
    vacuum, obc2 = AlanineDipeptide("vacuum"), AlanineDipeptide("obc2")
    system = obc2.create_system()
    assert any(isinstance(f, (openmm.GBSAOBCForce, openmm.CustomGBForce)) for f in system.getForces())
    positions = obc2.initial_positions()
    solvation = _energy(system, positions) - _energy(vacuum.create_system(), positions)
    assert -100.0 < solvation < -20.0  # two amides: about -45 kJ/mol with GB-OBC2 + ACE surface term


def test_shipped_pdb_is_c7eq_and_l_alanine():
    ala = AlanineDipeptide()
    phi, psi = np.degrees(ala.cv_values(ala.initial_positions())[0])
    assert -120.0 <= phi <= -50.0 and 40.0 <= psi <= 110.0
    traj = md.load(str(pdb_path()))
    zeta = np.degrees(md.compute_dihedrals(traj, [[8, 6, 14, 10]])[0, 0])  # CA-N-C-CB
    assert 20.0 < zeta < 50.0  # about +34 deg for L amino acids (PROCHECK)


def test_atom_index_constants():
    top = AlanineDipeptide().mdtraj_topology()
    assert HEAVY_ATOMS == tuple(a.index for a in top.atoms if a.element.symbol != "H")
    traj = md.load(str(pdb_path()))
    assert tuple(md.compute_phi(traj)[0][0]) == PHI_ATOMS
    assert tuple(md.compute_psi(traj)[0][0]) == PSI_ATOMS


def test_cv_values_match_mdtraj_on_perturbed_frames():
    ala = AlanineDipeptide()
    rng = np.random.default_rng(7)
    xyz = ala.initial_positions() + rng.normal(scale=0.08, size=(50, 22, 3))
    expected = md.compute_dihedrals(md.Trajectory(xyz, ala.mdtraj_topology()), [PHI_ATOMS, PSI_ATOMS])
    got = ala.cv_values(xyz)
    assert got.shape == (50, 2)
    assert np.ptp(got) > np.pi  # the perturbation really spans the circle
    assert np.allclose(got, expected, atol=1e-4)
    assert np.all((got > -np.pi) & (got <= np.pi))
    assert np.array_equal(AlanineDipeptide(cvs=("psi", "phi")).cv_values(xyz), got[:, ::-1])


def test_constructor_rejects_bad_arguments():
    assert AlanineDipeptide(cvs=["psi"]).cv_names == ("psi",)
    assert AlanineDipeptide().cv_periodic == (True, True)
    with pytest.raises(ValueError, match="solvent"):
        AlanineDipeptide("tip3p")
    with pytest.raises(ValueError, match="cvs"):
        AlanineDipeptide(cvs=("phi", "omega"))


def test_builder_reproduces_the_shipped_pdb():
    from cgflow.systems.build_alanine_pdb import build_pdb

    def coordinates(text):
        return np.array([[float(line[c:c + 8]) for c in (30, 38, 46)] for line in text.splitlines()
                         if line.startswith("ATOM")])

    assert np.allclose(coordinates(build_pdb()), coordinates(pdb_path().read_text()), atol=0.005)


def test_langevin_stays_in_c7eq_basin():
    ala = AlanineDipeptide()
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picoseconds)
    integrator.setRandomNumberSeed(1)
    context = _context(ala.create_system(), integrator)
    context.setPositions(ala.initial_positions())
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    frames = []
    for _ in range(100):
        integrator.step(20)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    phi, psi = np.degrees(ala.cv_values(np.array(frames))).T
    mean_phi, mean_psi = np.degrees(np.angle(np.exp(1j * np.radians([phi, psi])).mean(axis=1)))
    print(f"2000 steps at 300 K: mean phi {mean_phi:.1f} deg, mean psi {mean_psi:.1f} deg")
    assert np.all(phi < 0.0)
    assert np.all((psi > -30.0) | (psi < -150.0))  # C7eq/beta, never alpha_R
