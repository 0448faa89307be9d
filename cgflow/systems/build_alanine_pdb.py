"""Regenerate ``data/alanine_dipeptide.pdb`` offline, deterministically.

The structure is built from ideal internal coordinates (a Z-matrix placed with the NeRF
construction) in the C7eq conformation (phi -80 deg, psi +75 deg, trans peptides), then
energy-minimised with Amber ff14SB (``amber14-all.xml``) in vacuum on OpenMM's Reference
platform, so the shipped file can always be rebuilt without downloading anything::

    python -m cgflow.systems.build_alanine_pdb OUT.pdb
"""

from __future__ import annotations

import sys

PHI_DEG, PSI_DEG = -80.0, 75.0

# Atom -> (residue, name, element, (c, |cd| A, b, angle b-c-d deg, a, dihedral a-b-c-d deg)),
# in PDB order; None marks the three seed atoms placed directly in ideal_positions().
# BUILD_ORDER places every atom after its references. Names are Amber's; PDBFile maps them
# onto its canonical ones (e.g. ACE HH31 -> H1, NME CH3 -> C) through pdbNames.xml.
ZMATRIX = {
    "ACE:HH31": ("ACE", "HH31", "H", ("ACE:CH3", 1.09, "ACE:C", 109.5, "ALA:N", 180.0)),
    "ACE:CH3": ("ACE", "CH3", "C", None),
    "ACE:HH32": ("ACE", "HH32", "H", ("ACE:CH3", 1.09, "ACE:C", 109.5, "ALA:N", 60.0)),
    "ACE:HH33": ("ACE", "HH33", "H", ("ACE:CH3", 1.09, "ACE:C", 109.5, "ALA:N", -60.0)),
    "ACE:C": ("ACE", "C", "C", None),
    "ACE:O": ("ACE", "O", "O", ("ACE:C", 1.23, "ALA:N", 122.9, "ALA:CA", 0.0)),
    "ALA:N": ("ALA", "N", "N", None),
    "ALA:H": ("ALA", "H", "H", ("ALA:N", 1.01, "ACE:C", 119.8, "ACE:O", 180.0)),
    "ALA:CA": ("ALA", "CA", "C", ("ALA:N", 1.46, "ACE:C", 121.7, "ACE:CH3", 180.0)),
    "ALA:HA": ("ALA", "HA", "H", ("ALA:CA", 1.09, "ALA:N", 109.5, "ACE:C", PHI_DEG + 120.0)),
    "ALA:CB": ("ALA", "CB", "C", ("ALA:CA", 1.53, "ALA:N", 110.5, "ACE:C", PHI_DEG - 120.0)),
    "ALA:HB1": ("ALA", "HB1", "H", ("ALA:CB", 1.09, "ALA:CA", 109.5, "ALA:N", 60.0)),
    "ALA:HB2": ("ALA", "HB2", "H", ("ALA:CB", 1.09, "ALA:CA", 109.5, "ALA:N", 180.0)),
    "ALA:HB3": ("ALA", "HB3", "H", ("ALA:CB", 1.09, "ALA:CA", 109.5, "ALA:N", -60.0)),
    "ALA:C": ("ALA", "C", "C", ("ALA:CA", 1.52, "ALA:N", 111.0, "ACE:C", PHI_DEG)),
    "ALA:O": ("ALA", "O", "O", ("ALA:C", 1.23, "ALA:CA", 120.5, "ALA:N", PSI_DEG - 180.0)),
    "NME:N": ("NME", "N", "N", ("ALA:C", 1.33, "ALA:CA", 116.2, "ALA:N", PSI_DEG)),
    "NME:H": ("NME", "H", "H", ("NME:N", 1.01, "ALA:C", 119.8, "ALA:O", 180.0)),
    "NME:CH3": ("NME", "CH3", "C", ("NME:N", 1.46, "ALA:C", 121.7, "ALA:CA", 180.0)),
    "NME:HH31": ("NME", "HH31", "H", ("NME:CH3", 1.09, "NME:N", 109.5, "ALA:C", 180.0)),
    "NME:HH32": ("NME", "HH32", "H", ("NME:CH3", 1.09, "NME:N", 109.5, "ALA:C", 60.0)),
    "NME:HH33": ("NME", "HH33", "H", ("NME:CH3", 1.09, "NME:N", 109.5, "ALA:C", -60.0)),
}
BUILD_ORDER = ["ACE:CH3", "ACE:C", "ALA:N", "ALA:CA", "ALA:C", "NME:N", "NME:CH3", "ACE:O",
               "ALA:H", "ALA:HA", "ALA:CB", "ALA:O", "NME:H", "ACE:HH31", "ACE:HH32",
               "ACE:HH33", "ALA:HB1", "ALA:HB2", "ALA:HB3", "NME:HH31", "NME:HH32", "NME:HH33"]
RES_SEQ = {"ACE": 1, "ALA": 2, "NME": 3}


def _place(a, b, c, bond: float, angle_deg: float, dihedral_deg: float):
    """NeRF: the point d with |cd| = bond, angle(b, c, d) and dihedral(a, b, c, d) as given."""
    import numpy as np

    angle, dihedral = np.radians(angle_deg), np.radians(dihedral_deg)
    bc = (c - b) / np.linalg.norm(c - b)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    frame = np.column_stack([bc, np.cross(n, bc), n])
    local = bond * np.array([-np.cos(angle), np.sin(angle) * np.cos(dihedral), np.sin(angle) * np.sin(dihedral)])
    return c + frame @ local


def ideal_positions():
    """Positions (22, 3) in Angstrom from the Z-matrix, in PDB (ZMATRIX key) order."""
    import numpy as np

    theta = np.radians(116.6)  # CH3-C-N angle of the acetyl cap: seeds the first three atoms
    xyz = {"ACE:CH3": np.zeros(3), "ACE:C": np.array([1.52, 0.0, 0.0])}
    xyz["ALA:N"] = xyz["ACE:C"] + 1.33 * np.array([-np.cos(theta), np.sin(theta), 0.0])
    for key in BUILD_ORDER[3:]:
        c, bond, b, angle, a, dihedral = ZMATRIX[key][3]
        xyz[key] = _place(xyz[a], xyz[b], xyz[c], bond, angle, dihedral)
    return np.array([xyz[key] for key in ZMATRIX])


def format_pdb(positions_angstrom, remarks: list[str]) -> str:
    """A standard fixed-column PDB (REMARK, ATOM, TER, END; no CONECT, no CRYST1: vacuum)."""
    lines = [f"REMARK   1 {text}" for text in remarks]
    for serial, ((res, name, element, _), (x, y, z)) in enumerate(zip(ZMATRIX.values(), positions_angstrom), 1):
        padded = f" {name:<3}" if len(name) < 4 else name
        lines.append(f"ATOM  {serial:5d} {padded:<4} {res:>3} A{RES_SEQ[res]:4d}    "
                     f"{x:8.3f}{y:8.3f}{z:8.3f}  1.00  0.00          {element:>2}")
    lines += [f"TER   {len(ZMATRIX) + 1:5d}      NME A   3", "END"]
    return "\n".join(lines) + "\n"


def build_pdb() -> str:
    """The minimised C7eq structure as PDB text (Reference platform: reproducible)."""
    import io

    import openmm
    from openmm import app, unit

    pdb = app.PDBFile(io.StringIO(format_pdb(ideal_positions(), [])))
    system = app.ForceField("amber14-all.xml").createSystem(
        pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(pdb.positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    positions = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    return format_pdb(positions, [
        "ACE-ALA-NME (alanine dipeptide), vacuum, C7eq. Generated by",
        "cgflow.systems.build_alanine_pdb.build_pdb from ideal internal coordinates",
        f"(phi {PHI_DEG:g}, psi {PSI_DEG:g} deg), minimised with amber14-all.xml (ff14SB),",
        f"NoCutoff, HBonds, Reference platform, OpenMM {openmm.__version__}.",
    ])


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m cgflow.systems.build_alanine_pdb OUT.pdb")
    from cgflow.io import write_text

    write_text(args[0], build_pdb())


if __name__ == "__main__":
    main()
