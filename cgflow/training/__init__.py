"""Training objectives for the CG models: reweighted maximum likelihood (VMS rounds, METHODS §1)."""
