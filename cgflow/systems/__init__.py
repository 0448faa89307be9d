"""FG systems: toy potentials with exact references, OpenMM molecules, their CVs."""
