"""A small periodic Lennard-Jones fluid in OpenMM: the FG system of the Henderson check.

``N`` identical particles (argon-like mass) in a cubic box with a truncated LJ pair
potential ``4 eps ((sigma/r)^12 - (sigma/r)^6)`` for ``r < r_cut`` (CustomNonbondedForce, no
long-range correction, no switch). By Henderson's theorem the pair potential that reproduces
its radial distribution function is unique up to a constant, so a tabulated CG pair model
trained on the RDF must recover ``u_LJ(r) - u_LJ(r_cut)``. Units: nm, ps, K, kJ/mol, amu.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LJFluid:
    n_particles: int = 64
    density: float = 0.4  # reduced, rho sigma^3
    sigma: float = 0.34  # nm
    epsilon: float = 1.0  # kJ/mol
    cutoff: float = 2.5  # in sigma
    mass: float = 39.948  # amu

    @property
    def box(self) -> float:
        """Cubic box edge (nm)."""
        return float((self.n_particles / self.density) ** (1 / 3) * self.sigma)

    @property
    def r_cut(self) -> float:
        return self.cutoff * self.sigma

    def pair_energy(self, r: np.ndarray) -> np.ndarray:
        """Truncated LJ, shifted to zero at the cutoff (kJ/mol); what a CG pair model must recover."""
        sr6 = (self.sigma / np.asarray(r)) ** 6
        src6 = (1 / self.cutoff) ** 6
        u = 4 * self.epsilon * (sr6**2 - sr6) - 4 * self.epsilon * (src6**2 - src6)
        return np.where(np.asarray(r) < self.r_cut, u, 0.0)

    def create_system(self):
        import openmm

        if self.r_cut > self.box / 2:
            raise ValueError(f"LJ cutoff {self.r_cut:.3f} nm exceeds half the box {self.box / 2:.3f} nm")
        system = openmm.System()
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*(self.box if i == j else 0.0 for j in range(3)))
                                              for i in range(3)))
        force = openmm.CustomNonbondedForce("4*eps*((sig/r)^12-(sig/r)^6)")
        force.addGlobalParameter("eps", self.epsilon)
        force.addGlobalParameter("sig", self.sigma)
        force.setNonbondedMethod(openmm.CustomNonbondedForce.CutoffPeriodic)
        force.setCutoffDistance(self.r_cut)
        force.setUseLongRangeCorrection(False)
        for _ in range(self.n_particles):
            system.addParticle(self.mass)
            force.addParticle([])
        system.addForce(force)
        return system

    def initial_positions(self, seed: int = 0) -> np.ndarray:
        """A jittered simple-cubic lattice filling the box (nm)."""
        m = int(np.ceil(self.n_particles ** (1 / 3)))
        grid = np.stack(np.meshgrid(*(np.arange(m),) * 3, indexing="ij"), -1).reshape(-1, 3)[: self.n_particles]
        rng = np.random.default_rng(seed)
        return (grid + 0.5 + 0.05 * rng.standard_normal(grid.shape)) * self.box / m

    def sample(self, temperature: float, n_frames: int, stride: int, timestep: float = 0.01,
               friction: float = 2.0, equilibration: int = 2000, seed: int = 1, record_forces: bool = False):
        """Langevin MD on one OpenMM thread; returns positions (n_frames, N, 3) nm [, forces kJ/mol/nm]."""
        import openmm
        import openmm.unit as u

        from cgflow.sampling.platform import platform_properties

        integrator = openmm.LangevinMiddleIntegrator(temperature * u.kelvin, friction / u.picosecond,
                                                     timestep * u.picoseconds)
        integrator.setRandomNumberSeed(seed)
        context = openmm.Context(self.create_system(), integrator, openmm.Platform.getPlatformByName("CPU"),
                                 platform_properties("CPU"))
        context.setPositions(self.initial_positions(seed))
        openmm.LocalEnergyMinimizer.minimize(context, 1.0, 200)
        context.setVelocitiesToTemperature(temperature * u.kelvin, seed)
        integrator.step(equilibration)
        pos, frc = [], []
        for _ in range(n_frames):
            integrator.step(stride)
            state = context.getState(getPositions=True, getForces=record_forces)
            pos.append(state.getPositions(asNumpy=True).value_in_unit(u.nanometer))
            if record_forces:
                frc.append(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))
        pos = np.asarray(pos)
        return (pos, np.asarray(frc)) if record_forces else pos
