"""The bead-CG stage of a campaign: mapped FG data -> prior + network -> FM / RE / DiffTRe -> CG MD -> FES.

Functions here are what ``cgflow cg-sample`` and ``cgflow cg-train`` (and the benchmark) call;
each reads and writes plain files under ``results/<campaign>/cg/``. The FG data are the
mapped bead positions and mapped *unbiased* forces of alanine dipeptide's 10 heavy atoms
(``fg_mapped.npz``), from the stage's own unbiased run or from the biased sampling rounds with
each frame's unbiased weight (``weights``), which every FG average here then uses (the prior,
RE's FG term, DiffTRe's target, the replica starts, the FG FES; force matching's loss takes the
frames as they are, see :mod:`cgflow.training.force_matching`); CG MD runs
in torch (:mod:`cgflow.sampling.cg_md`) and its (phi, psi) FES is scored against the
(reweighted) FG histogram FES with :func:`cgflow.analysis.fes.compare_to_reference`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

KB = 0.0083144626181532
PHI_BEADS = (1, 3, 4, 6)  # heavy-atom bead indices of C(ACE)-N-CA-C
PSI_BEADS = (3, 4, 6, 8)  # N-CA-C-N(NME)
OBJECTIVES = ("fm", "re", "difftre", "fm+re")
OUTSIDE_WARN = 0.1
"""CG probability outside the FG's (phi, psi) region above which cg-train warns (FG's own: ~0.002)."""


def sample_fg_mapped(temperature=300.0, timestep=0.002, steps=200_000, stride=100, equilibration=5000,
                     seed=1, solvent="vacuum", friction=1.0, platform="CPU", folder: Path | None = None,
                     properties: dict | None = None, checkpoint_interval: int | None = None) -> dict:
    """Unbiased FG Langevin MD of alanine dipeptide recording mapped positions and forces.

    The MD is a sampling replica (:func:`cgflow.sampling.engine.run_replica`): in ``folder`` it
    saves a checkpoint every ``checkpoint_interval`` steps and resumes from the last one, so a
    killed run restarted there gives the same frames (without ``folder``, a temporary one).
    Returns ``x`` (n, 10, 3) nm, ``f`` (n, 10, 3) kJ/mol/nm (force map: heavy atom + its H),
    ``phipsi`` (n, 2) rad, ``masses`` (10,) amu, ``steps_per_s`` of the FG engine (frames included).
    """
    import tempfile
    from contextlib import nullcontext

    from cgflow.sampling.engine import MDSettings, Progress, run_replica
    from cgflow.sampling.platform import platform_properties
    from cgflow.systems.alanine import AlanineDipeptide

    system = AlanineDipeptide(solvent)
    settings = MDSettings(temperature, timestep, friction, steps, equilibration, stride,
                          checkpoint_interval or steps + equilibration)
    properties = platform_properties(platform) if properties is None else properties
    with nullcontext(folder) if folder else tempfile.TemporaryDirectory(prefix="cgflow-fg-") as where:
        frames = run_replica(system, [0], settings, platform, properties, seed, Path(where),
                             Progress(steps + equilibration), record_forces=True)
    return mapped_frames(system, frames.positions, frames.forces, temperature, (steps + equilibration) / frames.wall_s)


def mapped_frames(system, positions: np.ndarray, forces: np.ndarray, temperature: float, steps_per_s: float,
                  weights: np.ndarray | None = None) -> dict:
    """The cg stage's FG data from all-atom frames (n, 22, 3) nm and their unbiased forces (kJ/mol/nm)."""
    import openmm.unit as u

    from cgflow.systems.cg_map import alanine_map

    cmap = alanine_map()
    omm = system.create_system()
    masses = np.array([omm.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.n_atoms)])
    data = {"x": cmap.map_positions(positions), "f": cmap.map_forces(forces), "phipsi": system.cv_values(positions),
            "masses": (cmap.force > 0).astype(float) @ masses, "steps_per_s": steps_per_s,
            "temperature": temperature}
    if weights is not None:
        data["weights"] = np.asarray(weights, dtype=float) / np.sum(weights)
    return data


def rounds_mapped(campaign, sample_paths, force_paths, weights_path) -> dict:
    """The cg stage's FG data from every sampling round: frames and forces from ``forces.npz``,
    unbiased weights from the last round's ``weights.parquet`` (TRAM/MBAR over all rounds), and
    the platforms the rounds ran on (``platform``, comma-separated)."""
    import pandas as pd

    from cgflow.analysis.reweight import attach_weights
    from cgflow.io import read_provenance
    from cgflow.systems.alanine import AlanineDipeptide

    positions, forces, keys, steps, wall, platforms = [], [], [], 0, 0.0, set()
    for k, (samples, frames) in enumerate(zip(sample_paths, force_paths)):
        with np.load(frames) as f:
            positions.append(f["positions"])
            forces.append(f["forces"])
            keys.append(pd.DataFrame({"round": k, "walker": f["walker"], "step": f["step"]}))
        meta = read_provenance(samples)
        steps, wall = steps + meta["fg_steps"], wall + meta["md_wall_s"]
        platforms.update(meta["platform"].split(","))
    weights = attach_weights(campaign, pd.concat(keys, ignore_index=True), weights_path)["weight"].to_numpy()
    data = mapped_frames(AlanineDipeptide(campaign.system.solvent), np.concatenate(positions), np.concatenate(forces),
                         campaign.sampling.temperature, steps / max(wall, 1e-9), weights)
    return {**data, "platform": ",".join(sorted(platforms))}


def build_model(x_fg: np.ndarray, kT: float, network: str = "pair_mlp", hidden=(64, 64), n_rbf: int = 16,
                prior_terms=("bonds", "angles", "dihedrals", "repulsion"), weights: np.ndarray | None = None):
    """Prior fitted on the FG data (frames weighted by ``weights``) + a zero-initialised network of the given name."""
    from cgflow.models.bead_net import BeadPotential, make_network
    from cgflow.models.priors import Prior
    from cgflow.systems.cg_map import alanine_map, bead_bonds
    from cgflow.systems.alanine import HEAVY_ATOMS, AlanineDipeptide

    bonds = bead_bonds(AlanineDipeptide().topology(), HEAVY_ATOMS)
    prior = Prior.fit(x_fg, bonds, kT, weights=weights, terms=prior_terms)
    cmap = alanine_map()
    net = make_network(network, n_beads=x_fg.shape[1], dihedrals=[PHI_BEADS, PSI_BEADS], hidden=tuple(hidden),
                       n_rbf=n_rbf, bead_types=cmap.bead_types, n_types=len(cmap.type_names))
    return BeadPotential(prior, net)


def phipsi(x) -> np.ndarray:
    import torch

    from cgflow.models.priors import dihedral_angles

    x = torch.as_tensor(x)
    return dihedral_angles(x, torch.as_tensor([PHI_BEADS, PSI_BEADS])).numpy().reshape(-1, 2)


def fes_rmse(cg_phipsi, fg_phipsi, kT: float, n_bins: int = 24, cutoff_kT: float = 6.0,
             fg_weights: np.ndarray | None = None) -> tuple[dict, object, object]:
    """RMSE (kT) of the CG (phi, psi) FES against the (reweighted) FG one over the FG's region below ``cutoff_kT``."""
    from cgflow.analysis.fes import compare_to_reference, histogram_fes

    edges = [np.linspace(-math.pi, math.pi, n_bins + 1)] * 2
    ref = histogram_fes(fg_phipsi, edges, kT, weights=fg_weights, n_bootstrap=2)
    est = histogram_fes(cg_phipsi, edges, kT, n_bootstrap=2)
    return compare_to_reference(est, ref, kT, cutoff_kT), est, ref


def start_frames(n_frames: int, replicas: int, weights: np.ndarray | None, rng) -> np.ndarray:
    """Indices of the FG frames CG replicas start from: drawn with the frames' unbiased ``weights``,
    or uniformly and distinct while there are enough frames when there are none.

    CG MD shorter than a basin's escape time keeps the distribution it starts in, so replicas
    started uniformly from the biased rounds' frames would carry the rounds' bias into the CG
    FES (alanine: a quarter of the rounds' frames, and of such replicas, at phi > 0, against 3 %
    unbiased). The weighted draw is systematic resampling: one uniform offset, then a pick every
    1/replicas of the cumulative weight, so a run of consecutive frames (the rounds' frames come
    walker by walker in time order) holding weight W gets replicas x W starts within one, where
    independent draws scatter by sqrt(replicas x W): on alanine, 32 replicas and 2.6 % of the
    weight at phi > 0 leave that basin without a replica with probability 0.43."""
    if weights is None:
        return rng.choice(n_frames, size=replicas, replace=n_frames < replicas)
    cumulative = np.cumsum(np.asarray(weights, dtype=float))
    points = (rng.random() + np.arange(replicas)) / replicas * cumulative[-1]
    return np.minimum(np.searchsorted(cumulative, points, side="right"), n_frames - 1)


class CGSimulator:
    """Persistent CG MD replicas of ``forces`` (a BeadForces of the model in training): each call
    continues them and returns decorrelated frames (n, N, 3) in double precision, whatever the MD precision.
    The replicas start from FG frames ``x0`` drawn with their unbiased ``weights`` (:func:`start_frames`).

    The replicas arrive from the model of the previous call; the first ``equilibration`` steps of
    each call relax them to the current model and are not returned (chemtrain's ``t_equilib``).
    Without them the frames lag the model and bias the gradient: a harmonic bond learned by RE
    came out 2-9 % too stiff (tests/unit/test_cg_re_training.py)."""

    def __init__(self, forces, x0, masses, temperature, timestep, steps, replicas, report_interval=50, friction=1.0,
                 seed=0, equilibration=0, weights=None):
        import torch

        pick = start_frames(len(x0), replicas, weights, np.random.default_rng(seed))
        self.x = torch.as_tensor(np.asarray(x0)[pick])
        self.forces, self.masses, self.T, self.dt, self.steps = forces, masses, temperature, timestep, steps
        self.report, self.friction, self.equilibration = report_interval, friction, equilibration
        self.gen = torch.Generator(device=forces.device).manual_seed(seed)

    def __call__(self, model):
        """``model`` is the one ``forces`` wraps (the trainers' simulate(model) protocol)."""
        import torch

        from cgflow.sampling.cg_md import langevin_md

        if self.equilibration:
            self.x = langevin_md(self.forces, self.x, self.masses, self.T, self.dt, self.equilibration, self.friction,
                                 self.equilibration, generator=self.gen).positions[-1]
        tr = langevin_md(self.forces, self.x, self.masses, self.T, self.dt, self.steps, self.friction, self.report,
                         generator=self.gen)
        self.x = tr.positions[-1]
        return tr.positions.reshape(-1, *tr.positions.shape[2:]).to(torch.float64)

    def state(self) -> dict:
        """The replicas and their random stream, for a trainer's checkpoint."""
        return {"x": self.x, "generator": self.gen.get_state()}

    def load_state(self, state: dict) -> None:
        self.x = state["x"]
        self.gen.set_state(state["generator"])


def checkpoint_paths(model_path: Path) -> dict[str, Path]:
    """Each training stage's checkpoint beside ``model_path`` (``model.fm.ckpt``, ...)."""
    return {tag: Path(model_path).with_suffix(f".{tag}.ckpt") for tag in ("fm", "re", "difftre")}


def train(objective: str, model, data: dict, cfg: dict, checkpoint=None, seed: int = 0, signature: str | None = None):
    """Train ``model`` in place with ``objective``; returns the list of trainers that ran (history).
    ``checkpoint``: the model's path, beside which each stage checkpoints (:func:`checkpoint_paths`)
    and resumes, from a checkpoint written for the same ``signature`` only."""
    import torch

    from cgflow.sampling.cg_forces import BeadForces
    from cgflow.training.difftre import DiffTRe
    from cgflow.training.force_matching import ForceMatching
    from cgflow.training.observables import phipsi_hist
    from cgflow.training.relative_entropy import RelativeEntropy

    if objective not in OBJECTIVES:
        raise ValueError(f"cg.objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    kT = KB * data["temperature"]
    x, f = data["x"], data["f"]
    w = data.get("weights")
    done = []
    ckpt = (lambda tag: None) if checkpoint is None else checkpoint_paths(checkpoint).get
    if objective in ("fm", "fm+re"):
        fm = cfg["fm"]
        done.append(ForceMatching(model, x, f, batch_size=fm["batch_size"], lr=fm["lr"], max_epochs=fm["epochs"],
                                  patience=fm["patience"], checkpoint=ckpt("fm"), seed=seed, signature=signature).fit())
    sim_cfg, md = cfg["re"], cfg["md"]
    simulate = CGSimulator(BeadForces(model, md["precision"], md["compile"], md["device"]), x, data["masses"],
                           data["temperature"], md["timestep"], sim_cfg["sim_steps"], sim_cfg["replicas"],
                           sim_cfg["report_interval"], md["friction"], seed, sim_cfg["equilibration"], w)
    if objective in ("re", "fm+re"):
        done.append(RelativeEntropy(model, x, simulate, kT, fg_weights=w, threshold=cfg["n_eff_threshold"],
                                    lr=sim_cfg["lr"], max_epochs=sim_cfg["epochs"], checkpoint=ckpt("re"),
                                    seed=seed, divergence_factor=1e6, max_reuse=sim_cfg["max_reuse"],
                                    signature=signature).fit())
    if objective == "difftre":
        v = np.full(len(x), 1 / len(x)) if w is None else np.asarray(w) / np.sum(w)
        target = torch.as_tensor(v @ phipsi_hist(torch.as_tensor(x), PHI_BEADS, PSI_BEADS).numpy())
        obs = {"phipsi": lambda xs: phipsi_hist(xs, PHI_BEADS, PSI_BEADS)}
        done.append(DiffTRe(model, simulate, obs, {"phipsi": target}, kT, threshold=cfg["n_eff_threshold"],
                            lr=sim_cfg["lr"], max_epochs=sim_cfg["epochs"], checkpoint=ckpt("difftre"),
                            seed=seed, divergence_factor=1e6, signature=signature).fit())
    return done


def cg_md(model, data: dict, timestep: float, steps: int, replicas: int, report_interval: int, friction=1.0, seed=0,
          precision: str = "float32", compile: bool = True, device: str = "auto"):
    """Production CG MD from FG starting structures (:func:`start_frames`); returns the trajectory and
    CG replica-steps/s (steady state: a compile before the first step is not counted)."""
    import torch

    from cgflow.sampling.cg_forces import BeadForces
    from cgflow.sampling.cg_md import langevin_md

    pick = start_frames(len(data["x"]), replicas, data.get("weights"), np.random.default_rng(seed))
    x0 = torch.as_tensor(data["x"][pick])
    forces = BeadForces(model, precision, compile, device)
    tr = langevin_md(forces, x0, data["masses"], data["temperature"], timestep, steps, friction, report_interval,
                     generator=torch.Generator(device=forces.device).manual_seed(seed))
    return tr, replicas * steps / tr.wall_s


def save_model(model, path, meta: dict) -> None:
    import json

    from cgflow.io import write_torch

    write_torch(path, {"state_dict": model.state_dict(), "meta": json.dumps(meta)})


# --- campaign entry points (cgflow cg-sample / cg-train) -----------------------------------
def _provenance(campaign, **extra) -> dict:
    from cgflow.io import package_versions

    return {"config_hash": campaign.hash, "seed": campaign.seed, "versions": package_versions(), **extra}


def write_fg_mapped(campaign, out: Path, rounds: tuple[list, list, Path] | None = None) -> None:
    """Write ``fg_mapped.npz`` (mapped x, f; phi/psi; weights from rounds; the FG ``platform``): from
    the rounds' (samples, forces, weights) files when given (``cg.fg_data: rounds``), else from the
    stage's own unbiased FG run, whose work folder goes once the data are written (also when a
    killed own run left it and the config has since switched to the rounds)."""
    from cgflow.io import remove_tree, write_npz

    workdir = out.parent / ".work-fg"
    if rounds is not None:
        from cgflow.analysis.reweight import kish

        data = rounds_mapped(campaign, *rounds)
        log.info("FG mapped data from %d rounds: %d frames, Kish ESS %.0f", len(rounds[0]), len(data["x"]),
                 kish(data["weights"]))
    else:
        data = own_fg_run(campaign, workdir)
        log.info("FG mapped data: %d frames at %.0f steps/s", len(data["x"]), data["steps_per_s"])
    write_npz(out, **data)
    remove_tree(workdir)


def own_fg_run(campaign, workdir: Path) -> dict:
    """The stage's own unbiased FG run (``cg.fg_data: own``), set up as a sampling round is: on
    ``sampling.platform`` (``auto`` timed on this molecule), pinned as the rounds are, and
    checkpointed in ``workdir`` every ``sampling.checkpoint_interval`` steps, so a killed job
    resumes where it stopped. A ``workdir`` left by another config is discarded."""
    from cgflow.sampling.engine import MDSettings, make_context, open_run
    from cgflow.sampling.platform import platform_properties
    from cgflow.systems.alanine import AlanineDipeptide

    s, c = campaign.sampling, campaign.cg
    system = AlanineDipeptide(campaign.system.solvent)
    trial = MDSettings(s.temperature, s.timestep, s.friction, c.fg_steps, s.equilibration, c.fg_stride, c.fg_steps)
    platform, properties = open_run(workdir, {"config": campaign.stage_hash("cg_data")}, s,
                                    lambda name: make_context(system, 1, trial, name, platform_properties(name)))
    log.info("own FG run: %d steps on %s %s", c.fg_steps, platform, properties)
    data = sample_fg_mapped(s.temperature, s.timestep, c.fg_steps, c.fg_stride, s.equilibration, campaign.seed + 1,
                            campaign.system.solvent, s.friction, platform, workdir, properties, s.checkpoint_interval)
    return {**data, "platform": platform}


def write_objective(campaign, objective: str, fg: Path, out_dir: Path) -> None:
    """Train one objective on ``fg`` and write model.pt, train.json, cg_md.dcd/.pdb, fes.csv, summary.json."""
    import pandas as pd
    import torch

    from cgflow.io import config_hash, write_json, write_text
    from cgflow.sampling.cg_md import save_trajectory
    from cgflow.systems.cg_map import alanine_bead_topology

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    c = campaign.cg
    with np.load(fg) as f:
        data = {k: f[k] for k in f.files}
    data["temperature"] = float(data["temperature"])
    kT = KB * data["temperature"]
    torch.manual_seed(campaign.seed)
    model = build_model(data["x"], kT, c.network, c.hidden, c.n_rbf, c.prior, data.get("weights"))
    out_dir.mkdir(parents=True, exist_ok=True)
    # a checkpoint is resumed only by a job on the same FG data, cg settings and objective
    signature = config_hash({"cg": campaign.stage_hash("cg"), "objective": objective,
                             "data": hashlib.sha256(Path(fg).read_bytes()).hexdigest()})
    trainers = train(objective, model, data, c.trainer_settings(), checkpoint=out_dir / "model.pt", seed=campaign.seed,
                     signature=signature)
    meta = {"objective": objective, "network": c.network, "map": c.map, "temperature_K": data["temperature"],
            **_provenance(campaign)}
    save_model(model, out_dir / "model.pt", meta)
    write_json(out_dir / "train.json", {"objective": objective,
                                        "stages": [{"trainer": type(t).__name__, "history": t.history} for t in trainers]})
    traj, rate = cg_md(model, data, c.md_timestep, c.md_steps, c.md_replicas, max(1, c.md_steps // 500),
                       c.md_friction, campaign.seed, c.md_precision, c.md_compile, c.md_device)
    save_trajectory(traj, out_dir / "cg_md.dcd", alanine_bead_topology())
    cg_pp = phipsi(traj.positions[len(traj.positions) // 10:].reshape(-1, 10, 3))
    score, est, ref = fes_rmse(cg_pp, data["phipsi"], kT, fg_weights=data.get("weights"))
    centres = [0.5 * (e[1:] + e[:-1]) for e in est.edges]
    grid = np.meshgrid(*centres, indexing="ij")
    frame = pd.DataFrame({"phi": grid[0].ravel(), "psi": grid[1].ravel(),
                          "F_cg_kJmol": (est.F - np.nanmin(est.F)).ravel(),
                          "F_fg_kJmol": (ref.F - np.nanmin(ref.F)).ravel()})
    write_text(out_dir / "fes.csv", frame.to_csv(index=False, float_format="%.6g"))
    write_json(out_dir / "summary.json", {
        "objective": objective, "fes_rmse_vs_fg_kT": score["rmse_kT"], "fes_coverage": score["coverage"],
        "cg_mass_outside_fg": score["outside_mass"],
        "fes_bins_below_cutoff": score["n_bins"], "cg_md_ns": traj.steps * c.md_timestep / 1000 * c.md_replicas,
        "cg_md_timestep_ps": c.md_timestep, "cg_replica_steps_per_s": rate,
        "fg_data": c.fg_data, "fg_platform": str(data["platform"]) if "platform" in data else None,
        "fg_steps_per_s": float(data["steps_per_s"]), "cg_over_fg_speed": rate / float(data["steps_per_s"]),
        "wall_s": time.perf_counter() - t0, "provenance": _provenance(campaign)})
    for path in checkpoint_paths(out_dir / "model.pt").values():
        path.unlink(missing_ok=True)
    if score["outside_mass"] > OUTSIDE_WARN:
        log.warning("cg/%s: CG MD puts %.0f %% of its probability where the FG data has (almost) none "
                    "(cg_mass_outside_fg); its FES RMSE of %.2f kT cannot see that. Force matching extrapolates "
                    "into such regions: give it FG frames there (cg.fg_data: rounds), or use relative entropy "
                    "(re), which pushes the CG samples back out of them",
                    objective, 100 * score["outside_mass"], score["rmse_kT"])
