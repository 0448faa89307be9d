"""The metadynamics peer: OpenMM's own well-tempered ``openmm.app.Metadynamics``, run with
the campaign's CVs, walkers and FG step budget, so it can be compared with cgflow side by side.

Budget. cgflow spends B = (N+1) * walkers * (steps + equilibration) FG steps over its rounds
0..N; each metadynamics walker runs (N+1) * (steps + equilibration) steps. Gaussians are
deposited from the first step (every FG step a walker takes builds the bias); frames are saved
every ``report_interval`` steps after the first ``equilibration`` steps, as in a round.

Multiple walkers, one bias. OpenMM's Metadynamics biases one system-wide CV, so a walker is a
single-walker System (a toy: one particle; alanine dipeptide: one molecule). All walkers share
ONE Metadynamics object in ONE Simulation and are advanced round-robin: each sweep moves every
walker in turn to the next sweep boundary (every Gaussian ``frequency``, at the latest),
swapping its State (positions, velocities, own step counter) in and out of the Context. Every
Gaussian a walker deposits goes into the shared bias, which the next walker feels at once.
This is synchronous multiple-walker well-tempered metadynamics (Raiteri et al. 2006): OpenMM's
own multiple-walker mode shares the bias through files in ``biasDir``, each process adding the
others' latest Gaussians every ``saveFrequency`` steps; with saveFrequency = frequency and the
walkers in step, that is this scheme, where a walker sees the others' Gaussians at most one
deposition period late. Here the sharing is exact and immediate, with no file races, and the
whole run is reproducible from the campaign seed. The bias factor is ``guidance.gamma`` unless
``analysis.metadynamics.bias_factor`` is given: by default metadynamics flattens F to the same
F/gamma that cgflow's well-tempered target aims at, but a gamma that suits cgflow may not suit
metadynamics (on Müller-Brown, 2 against 16), and a peer is compared at its own best: the bench
configs choose its bias factor, Gaussian interval and height per system on held-out seeds.

Toy CVs are clamped to the bias grid, ``min(max(cv, lower), upper)``: OpenMM's tabulated bias
is zero outside its grid, and a walker that crossed the edge would fall off a bias cliff into
the potential's wall; clamped, the bias is constant beyond the grid, as cgflow's own bias
(:class:`cgflow.guidance.bias.BiasGrid`) is. A walker past the edge then deposits its Gaussians
at the edge, so they pile up there; the grid of a non-periodic CV therefore reaches
``GRID_MARGIN_WIDTHS`` Gaussian widths past the analysis range, where the pile-up cannot
distort the free energy that is scored. (Without the margin, Müller-Brown's three bins at the
x = -1.5 edge, 3.4-4.1 kT up and scored, came out 1.0-1.8 kT too deep on four seeds.)

Checkpoints. The run goes in chunks (a chunk closes at the first sweep boundary at or after
each multiple of ``checkpoint_interval`` per-walker steps, so the chunking never changes the
trajectory); each chunk is one atomically written ``.npz`` with its frames, the Gaussians and
free-energy snapshots taken in it, every walker's positions and velocities, the bias grid and
an OpenMM checkpoint of the Context (its random-number state). A killed job restarted on the
same ``out_dir`` reloads the last chunk and gives exactly the uninterrupted output.

Outputs in ``out_dir``: ``samples.parquet`` (the columns of a round's samples; the bias energy
is the metadynamics bias at the frame) and ``fes_snapshots.npz`` (see :func:`write_snapshots`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from cgflow.io import package_versions, remove_tree, write_npz, write_parquet
from cgflow.sampling.engine import MDSettings, ReplicaFrames, check_consecutive, fg_frame, open_run, replica_seed
from cgflow.sampling.platform import platform_properties

log = logging.getLogger(__name__)

UNBIASED_ROUND = 1000
"""Round index of the unbiased peer: it only decorrelates the peer's seeds from round 0's."""
METAD_STREAM = 2000
"""Seed stream of the metadynamics peer (walker velocities; +1: the shared integrator)."""


GRID_MARGIN_WIDTHS = 6.0
"""How far (in Gaussian widths) a non-periodic CV's bias grid reaches past its analysis range."""


@dataclass(frozen=True)
class MetadSettings:
    """Well-tempered metadynamics on a grid over the analysis CV domain, widened by
    ``GRID_MARGIN_WIDTHS`` widths for non-periodic CVs (kJ/mol; CV units: nm or rad)."""

    height: float
    width: tuple[float, ...]
    frequency: int
    grid: tuple[int, ...]
    """Bias grid points per CV: ``analysis.metadynamics.grid`` over the analysis range, plus the margin's."""
    bias_factor: float
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    """The bias grid's range per CV."""
    periodic: tuple[bool, ...]

    @classmethod
    def from_campaign(cls, campaign) -> "MetadSettings":
        """height default kT/2, width default 1/20 of each CV's range, bias factor default gamma."""
        from cgflow.analysis.campaign import cv_domain

        lower, upper, periodic = cv_domain(campaign)
        m = campaign.analysis.metadynamics
        width = tuple(m["width"] if "width" in m else (hi - lo) / 20 for lo, hi in zip(lower, upper))
        spacing = [(hi - lo) / (m["grid"] - 1) for lo, hi in zip(lower, upper)]
        extra = [0 if p else int(np.ceil(GRID_MARGIN_WIDTHS * w / h)) for p, w, h in zip(periodic, width, spacing)]
        return cls(float(m.get("height", campaign.sampling.kT / 2)), width, int(m["frequency"]),
                   tuple(int(m["grid"]) + 2 * e for e in extra), float(m.get("bias_factor", campaign.guidance.gamma)),
                   tuple(lo - e * h for lo, e, h in zip(lower, extra, spacing)),
                   tuple(hi + e * h for hi, e, h in zip(upper, extra, spacing)), periodic)

    def axes(self) -> list[np.ndarray]:
        """The bias grid's points per CV (OpenMM spaces ``grid`` points over [lower, upper],
        both ends included, whatever getFreeEnergy's docstring says)."""
        return [np.linspace(lo, hi, n) for lo, hi, n in zip(self.lower, self.upper, self.grid)]


class SharedBias:
    """One ``openmm.app.Metadynamics`` that every walker deposits into, with a log of its
    Gaussians (walker, walker's step, CV values, height), like PLUMED's HILLS file."""

    def __init__(self, omm_system, variables, temperature: float, settings: MetadSettings):
        import openmm.unit as u
        from openmm.app import Metadynamics

        kJ = u.kilojoule_per_mole
        self.metad = Metadynamics(omm_system, variables, temperature, settings.bias_factor, settings.height,
                                  settings.frequency)
        self.walker = 0
        self.hills: list[tuple] = []
        deposit = self.metad._addGaussian  # called by Metadynamics.step for each Gaussian

        def logged(position, height, context):
            self.hills.append((self.walker, context.getStepCount(), list(position), height.value_in_unit(kJ)))
            deposit(position, height, context)

        self.metad._addGaussian = logged

    @property
    def force_group(self) -> int:
        return self.metad._force.getForceGroup()

    def step(self, simulation, steps: int) -> None:
        self.metad.step(simulation, steps)

    def free_energy(self) -> np.ndarray:
        """getFreeEnergy() in kJ/mol with axis i = CV i (OpenMM stores the last CV first)."""
        import openmm.unit as u

        F = self.metad.getFreeEnergy().value_in_unit(u.kilojoule_per_mole)
        return np.ascontiguousarray(np.transpose(F))

    def arrays(self) -> dict:
        return {"self_bias": self.metad._selfBias.copy(), "total_bias": self.metad._totalBias.copy()}

    def restore(self, self_bias: np.ndarray, total_bias: np.ndarray, context) -> None:
        """Reload a checkpointed bias grid. Metadynamics has no public way to do this short of
        its bias files, so this sets its private grids and pushes them into its tabulated
        function exactly as its own _addGaussian does (checked against OpenMM 8.x's source)."""
        m = self.metad
        m._selfBias[...] = self_bias
        m._totalBias[...] = total_bias
        if len(m.variables) == 1:
            m._table.setFunctionParameters(m._totalBias.flatten(), *m._limits)
        else:
            m._table.setFunctionParameters(*m._widths, m._totalBias.flatten(), *m._limits)
        m._force.updateParametersInContext(context)


def _bias_variables(system, settings: MetadSettings) -> list:
    """One BiasVariable per CV: a toy CV (clamped, see the module docstring) of the single
    particle, or a torsion ('theta') of alanine dipeptide."""
    import openmm
    from openmm.app import BiasVariable

    variables = []
    for i, name in enumerate(system.cv_names):
        lo, hi = settings.lower[i], settings.upper[i]
        if system.shares_context:
            force = openmm.CustomExternalForce(f"min(max({system.cvs[i].expression}, {lo!r}), {hi!r})")
            force.addParticle(0, [])
        else:
            from cgflow.systems.alanine import PHI_ATOMS, PSI_ATOMS

            force = openmm.CustomTorsionForce("theta")
            force.addTorsion(*{"phi": PHI_ATOMS, "psi": PSI_ATOMS}[name], [])
        variables.append(BiasVariable(force, lo, hi, settings.width[i], settings.periodic[i], settings.grid[i]))
    return variables


def _topology(system):
    from openmm import app

    if not system.shares_context:
        return system.topology()
    top = app.Topology()
    top.addAtom("P", None, top.addResidue("TOY", top.addChain()))
    return top


def _simulation(system, settings: MDSettings, metad: MetadSettings, platform: str, seed: int,
                properties: dict | None = None):
    """The one Simulation all walkers take turns in, with the shared bias (``properties``: the
    Context's, default :func:`platform_properties`' for ``platform``)."""
    import openmm
    import openmm.unit as u
    from openmm import app

    omm_system = system.create_system(1) if system.shares_context else system.create_system()
    bias = SharedBias(omm_system, _bias_variables(system, metad), settings.temperature, metad)
    integrator = openmm.LangevinMiddleIntegrator(
        settings.temperature * u.kelvin, settings.friction / u.picosecond, settings.timestep * u.picoseconds)
    integrator.setRandomNumberSeed(seed)
    simulation = app.Simulation(_topology(system), omm_system, integrator,
                                openmm.Platform.getPlatformByName(platform),
                                platform_properties(platform) if properties is None else properties)
    return simulation, bias


@dataclass
class _Chunk:
    """What a chunk file holds: frames, Gaussians and snapshots of the chunk, and the state at its end."""

    end_step: int
    frames: dict  # walker, step, positions, cv, potential, bias
    hills: dict  # walker, step, cv, height
    snapshots: dict  # step (per walker), F (on the metadynamics grid, CV order)
    positions: np.ndarray  # (walkers, particles, 3) nm
    velocities: np.ndarray  # (walkers, particles, 3) nm/ps
    bias: dict  # self_bias, total_bias (OpenMM's axis order)
    checkpoint: bytes
    wall_s: float

    def save(self, path: Path) -> None:
        arrays = {f"frame_{k}": v for k, v in self.frames.items()}
        arrays |= {f"hill_{k}": v for k, v in self.hills.items()}
        arrays |= {f"snap_{k}": v for k, v in self.snapshots.items()}
        write_npz(path, end_step=self.end_step, positions=self.positions, velocities=self.velocities,
                  checkpoint=np.frombuffer(self.checkpoint, dtype=np.uint8), wall_s=self.wall_s,
                  **arrays, **self.bias)

    @classmethod
    def load(cls, path: Path) -> "_Chunk":
        with np.load(path) as d:
            part = {p: {k[len(p) + 1:]: d[k] for k in d.files if k.startswith(p + "_")}
                    for p in ("frame", "hill", "snap")}
            return cls(int(d["end_step"]), part["frame"], part["hill"], part["snap"], d["positions"], d["velocities"],
                       {"self_bias": d["self_bias"], "total_bias": d["total_bias"]}, d["checkpoint"].tobytes(),
                       float(d["wall_s"]))


class _Recorder:
    """Frames, Gaussians and snapshots of the chunk in progress; the frames' CVs are computed
    from their positions for the whole chunk at once (per frame they cost more than ten MD steps
    of alanine dipeptide)."""

    def __init__(self, system, grid_shape: tuple[int, ...]):
        self.system, self.grid_shape = system, grid_shape
        self.frames = {k: [] for k in ("walker", "step", "positions", "potential", "bias")}
        self.snapshots = {"step": [], "F": []}

    def frame(self, walker, step, positions, potential, bias) -> None:
        for key, value in zip(self.frames, (walker, step, positions, potential, bias)):
            self.frames[key].append(value)

    def arrays(self, n_particles: int) -> tuple[dict, dict]:
        f = self.frames
        positions = np.asarray(f["positions"], dtype=float).reshape(-1, n_particles, 3)
        # a toy walker is one particle of a Context of its own here: its CVs take (n, 3)
        cv = self.system.cv_values(positions[:, 0] if self.system.shares_context else positions)
        frames = {"walker": np.asarray(f["walker"], dtype=np.int32), "step": np.asarray(f["step"], dtype=np.int64),
                  "positions": positions,
                  "cv": np.asarray(cv, dtype=float).reshape(-1, len(self.system.cv_names)),
                  "potential": np.asarray(f["potential"], dtype=float), "bias": np.asarray(f["bias"], dtype=float)}
        snaps = {"step": np.asarray(self.snapshots["step"], dtype=np.int64),
                 "F": np.asarray(self.snapshots["F"], dtype=float).reshape(-1, *self.grid_shape)}
        return frames, snaps


def _hill_arrays(hills: list[tuple], n_cvs: int) -> dict:
    return {"walker": np.array([h[0] for h in hills], dtype=np.int32),
            "step": np.array([h[1] for h in hills], dtype=np.int64),
            "cv": np.array([h[2] for h in hills], dtype=float).reshape(-1, n_cvs),
            "height": np.array([h[3] for h in hills], dtype=float)}


def _walker_state(context) -> tuple[np.ndarray, np.ndarray]:
    import openmm.unit as u

    state = context.getState(getPositions=True, getVelocities=True)
    return (state.getPositions(asNumpy=True).value_in_unit(u.nanometer),
            state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond))


def _sweep_ends(schedule: np.ndarray, frequency: int) -> list[int]:
    """Per-walker steps at which every walker has caught up: each Gaussian period and budget point."""
    total = int(schedule[-1])
    return sorted(set(range(frequency, total, frequency)) | {int(s) for s in schedule})


def _chunk_steps(sweep_ends: list[int], checkpoint_interval: int) -> list[int]:
    """The sweep ends at which a chunk is saved: the first in each checkpoint interval, and the last."""
    saves, previous = [], 0
    for end in sweep_ends:
        if end == sweep_ends[-1] or end // checkpoint_interval > previous // checkpoint_interval:
            saves.append(end)
            previous = end
    return saves


def _next_frame(step: int, eq: int, ri: int) -> int:
    """The first step after ``step`` at which a frame is saved (every ``ri`` steps after ``eq``)."""
    return eq + (max(step - eq, 0) // ri + 1) * ri


def _start(system) -> np.ndarray:
    return system.initial_positions(1) if system.shares_context else system.initial_positions()


def _fresh_walkers(system, simulation, n_walkers: int, temperature: float, seed: int):
    """Every walker at the system's start with its own Maxwell-Boltzmann velocities."""
    import openmm.unit as u

    start = _start(system)
    context = simulation.context
    positions, velocities = [], []
    for w in range(n_walkers):
        context.setPositions(start)
        context.setVelocitiesToTemperature(temperature * u.kelvin, replica_seed(seed, METAD_STREAM, w))
        p, v = _walker_state(context)
        positions.append(p)
        velocities.append(v)
    return np.array(positions), np.array(velocities)


def sample_metadynamics(campaign, out_dir: Path) -> tuple[list[ReplicaFrames], list[_Chunk], str]:
    """Run (or resume) the multiple-walker metadynamics in ``out_dir/.work``; return the frames
    (one ReplicaFrames per walker), the chunks (with the snapshots and Gaussians) and the platform."""
    from cgflow.analysis.convergence import budget_schedule

    sampling = campaign.sampling
    system = campaign.system.build()
    metad = MetadSettings.from_campaign(campaign)
    schedule = budget_schedule(campaign)
    total, eq, ri = int(schedule[-1]), sampling.equilibration, sampling.report_interval
    settings = replace(MDSettings.from_config(sampling), steps=total - eq)
    n_walkers, n_cvs = sampling.walkers, len(system.cv_names)
    workdir = Path(out_dir) / ".work"
    job = {"config": campaign.stage_hash("sampling"), "method": "metadynamics", "metadynamics": asdict(metad),
           "schedule": schedule.tolist()}
    job = json.loads(json.dumps(job))  # tuples as lists, as the manifest reads back
    def trial(name):  # the platform is timed on the real thing: CustomCVForce costs differ a lot between them
        simulation, _ = _simulation(system, settings, metad, name, 1)
        simulation.context.setPositions(_start(system))
        return simulation.context, simulation.integrator

    platform, properties = open_run(workdir, job, sampling, trial)
    simulation, bias = _simulation(system, settings, metad, platform,
                                   replica_seed(campaign.seed, METAD_STREAM + 1, 0), properties)
    context = simulation.context
    sweeps = _sweep_ends(schedule, metad.frequency)
    saves = _chunk_steps(sweeps, sampling.checkpoint_interval)
    chunks = [_Chunk.load(p) for p in sorted(workdir.glob("chunk-*.npz"))]
    check_consecutive(workdir, [c.end_step for c in chunks], saves)
    if chunks:
        last = chunks[-1]
        context.loadCheckpoint(last.checkpoint)
        bias.restore(last.bias["self_bias"], last.bias["total_bias"], context)
        step, positions, velocities = last.end_step, last.positions.copy(), last.velocities.copy()
        log.info("metadynamics: resuming from step %d of %d per walker", step, total)
    else:
        step = 0
        positions, velocities = _fresh_walkers(system, simulation, n_walkers, sampling.temperature, campaign.seed)
    grid_shape = metad.grid
    recorder, t0, chunk_start = _Recorder(system, grid_shape), time.perf_counter(), step
    for end in [e for e in sweeps if e > step]:
        for w in range(n_walkers):
            context.setPositions(positions[w])
            context.setVelocities(velocities[w])
            simulation.currentStep = step  # the walker's own clock: Gaussians every `frequency` of its steps
            bias.walker = w
            for frame_step in range(_next_frame(step, eq, ri), end + 1, ri):
                bias.step(simulation, frame_step - simulation.currentStep)
                pos, pot, b, _ = fg_frame(context, bias.force_group)
                recorder.frame(w, frame_step - eq, pos, pot, b)
            if end > simulation.currentStep:
                bias.step(simulation, end - simulation.currentStep)
            positions[w], velocities[w] = _walker_state(context)
        step = end
        if step in schedule:
            recorder.snapshots["step"].append(step)
            recorder.snapshots["F"].append(bias.free_energy())
        if step in saves:
            frames, snaps = recorder.arrays(positions.shape[1])
            chunk = _Chunk(step, frames, _hill_arrays(bias.hills, n_cvs), snaps, positions, velocities,
                           bias.arrays(), context.createCheckpoint(), time.perf_counter() - t0)
            chunk.save(workdir / f"chunk-{step:010d}.npz")
            chunks.append(chunk)
            log.info("metadynamics: step %d of %d per walker, %d Gaussians, %.3g walker-steps/s", step, total,
                     sum(len(c.hills["height"]) for c in chunks),
                     n_walkers * (step - chunk_start) / max(chunk.wall_s, 1e-9))
            recorder, bias.hills, t0, chunk_start = _Recorder(system, grid_shape), [], time.perf_counter(), step
    del simulation, context
    return _gather(chunks, n_walkers), chunks, platform


def _gather(chunks: list[_Chunk], n_walkers: int) -> list[ReplicaFrames]:
    cat = {k: np.concatenate([c.frames[k] for c in chunks]) for k in chunks[0].frames}
    wall = sum(c.wall_s for c in chunks) / n_walkers  # the walkers share one Context's time
    out = []
    for w in range(n_walkers):
        mine = cat["walker"] == w
        out.append(ReplicaFrames(walkers=[w], step=cat["step"][mine], positions=cat["positions"][mine],
                                 cv=cat["cv"][mine][:, None, :], potential=cat["potential"][mine][:, None],
                                 bias=cat["bias"][mine][:, None], wall_s=wall))
    return out


def write_snapshots(campaign, chunks: list[_Chunk], path: Path) -> dict:
    """``fes_snapshots.npz``: ``budget_steps`` (total FG steps of all walkers at each budget
    point), ``F`` (n_points, *bins) kJ/mol, the metadynamics free energy (getFreeEnergy)
    integrated over each analysis bin (:func:`cgflow.analysis.fes.bin_free_energy`) and shifted
    to zero at its minimum,
    ``counts`` (n_points, *bins) the walkers' saved frames per bin by then, ``edges_<i>`` the
    analysis bin edges of CV i (one array each, as their lengths may differ), ``cv_names``, and
    the Gaussians: ``hills_walker``, ``hills_step`` (the walker's own step), ``hills_cv``,
    ``hills_height`` (kJ/mol). Returns the arrays written."""
    from cgflow.analysis.campaign import cv_edges
    from cgflow.analysis.fes import bin_free_energy

    metad = MetadSettings.from_campaign(campaign)
    edges = cv_edges(campaign)
    steps = np.concatenate([c.snapshots["step"] for c in chunks])
    frame_step = np.concatenate([c.frames["step"] for c in chunks])
    frame_cv = np.concatenate([c.frames["cv"] for c in chunks])
    F, counts = [], []
    for step, grid_F in zip(steps, np.concatenate([c.snapshots["F"] for c in chunks])):
        f = bin_free_energy(metad.axes(), grid_F, edges, campaign.sampling.kT)
        F.append(f - f.min())
        counts.append(np.histogramdd(frame_cv[frame_step <= step - campaign.sampling.equilibration], bins=edges)[0])
    hills = {k: np.concatenate([c.hills[k] for c in chunks]) for k in chunks[0].hills}
    arrays = {"budget_steps": steps * campaign.sampling.walkers, "F": np.array(F),
              "counts": np.array(counts, dtype=np.int64), "cv_names": np.array(campaign.system.cv_names),
              **{f"edges_{i}": e for i, e in enumerate(edges)}, **{f"hills_{k}": v for k, v in hills.items()}}
    write_npz(path, **arrays)
    return arrays


def read_snapshots(path: str | Path) -> dict:
    """The arrays of a ``fes_snapshots.npz`` (see :func:`write_snapshots`), with the bin edges
    gathered into ``edges`` (a list, one array per CV)."""
    with np.load(path, allow_pickle=False) as d:
        out = {k: d[k] for k in d.files if not k.startswith("edges_")}
        out["edges"] = [d[f"edges_{i}"] for i in range(len(out["cv_names"]))]
    return out


def run_metadynamics(campaign, out_dir: Path) -> Path:
    """The ``cgflow peer --method metadynamics`` action: sample, then write samples.parquet
    and fes_snapshots.npz atomically; return the samples' path."""
    from cgflow.sampling.round import frames_table

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    frames, chunks, platform = sample_metadynamics(campaign, out_dir)
    snapshots = write_snapshots(campaign, chunks, out_dir / "fes_snapshots.npz")
    system = campaign.system
    table = frames_table(frames, system.cv_names, campaign.sampling.timestep, system.is_toy)
    metad = MetadSettings.from_campaign(campaign)
    provenance = {
        "sampling_hash": campaign.stage_hash("sampling"),
        "seed": campaign.seed,
        "method": "metadynamics",
        "platform": platform,
        "fg_steps": int(snapshots["budget_steps"][-1]),
        "metadynamics": {**asdict(metad), "walkers": campaign.sampling.walkers,
                         "gaussians": int(len(snapshots["hills_height"]))},
        "md_wall_s": sum(c.wall_s for c in chunks),
        "wall_s": time.perf_counter() - t0,
        "versions": package_versions(),
    }
    write_parquet(table, out_dir / "samples.parquet", provenance)
    remove_tree(out_dir / ".work")
    log.info("wrote %s: %d frames, %d Gaussians of %d walkers on %s", out_dir / "samples.parquet", len(table),
             len(snapshots["hills_height"]), campaign.sampling.walkers, platform)
    return out_dir / "samples.parquet"


def run_unbiased(campaign, out_dir: Path) -> Path:
    """The unbiased peer: one long unbiased run of the same walkers with cgflow's whole budget,
    (N+1)*steps + N*equilibration production steps after one equilibration. It is a round in
    all but name; its round index (UNBIASED_ROUND) only decorrelates its seeds from round 0's."""
    from cgflow.sampling.round import run

    s, n = campaign.sampling, campaign.guidance.rounds
    return run(campaign, UNBIASED_ROUND, Path(out_dir), steps=(n + 1) * s.steps + n * s.equilibration)


def cli_peer(args) -> None:
    """``cgflow peer --config C --method unbiased|metadynamics --out-dir D``."""
    from cgflow.config import load_config

    campaign = load_config(Path(args.config))
    action = {"unbiased": run_unbiased, "metadynamics": run_metadynamics}[args.method]
    action(campaign, Path(args.out_dir))
