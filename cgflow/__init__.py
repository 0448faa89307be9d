"""cgflow: multiscale molecular-modelling campaigns (FG sampling, CG models, CG-guided rounds).

The package is light to import: heavy dependencies (openmm, torch, mdtraj) are imported
inside the functions that need them, so ``cgflow --help`` and ``snakemake -n`` stay fast.
"""

__version__ = "0.1.0"
