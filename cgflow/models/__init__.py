"""Torch models of CG free energies: CV-space energy ensembles (VMS rounds, METHODS §1)."""
