"""The shipped SLURM profile, installed where ``snakemake --profile slurm`` finds it.

Snakemake looks a profile name up in the working directory and then in its user and site
config folders, never in this checkout's ``profiles/``. So ``--profile profiles/slurm`` works
from the checkout only; ``cgflow install-profile`` copies the profile into the user config
folder (``~/.config/snakemake`` on Linux, found the way Snakemake finds it) once, and then
``snakemake --profile slurm`` works too. A copy the user has edited (their partition and
account) is never overwritten without ``--force``, and then it is kept as ``config.yaml.bak``.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "profiles" / "slurm" / "config.yaml"
"""The profile in the checkout that holds this package (the editable install ``make`` does)."""


class ProfileError(RuntimeError):
    """The profile cannot be installed: nothing shipped to copy, or an edited copy in the way."""


def user_profile_dir() -> Path:
    """Where Snakemake looks for ``--profile slurm`` after the working directory."""
    from platformdirs import user_config_dir

    return Path(user_config_dir("snakemake", "snakemake")) / "slurm"


def install_profile(force: bool = False) -> tuple[Path, bool]:
    """Copy the shipped profile to :func:`user_profile_dir`; return its path and whether it was
    written (False: an identical copy is there already)."""
    from cgflow.io import write_text

    if not SHIPPED.is_file():
        raise ProfileError(f"no profile at {SHIPPED}: this cgflow is not installed from a checkout "
                           "(install it with `make install`, or copy profiles/slurm by hand)")
    text = SHIPPED.read_text()
    target = user_profile_dir() / "config.yaml"
    if target.is_file():
        if target.read_text() == text:
            return target, False
        if not force:
            raise ProfileError(f"{target} exists and differs from the shipped profile (your site's edits?); "
                               "keep it, or replace it with --force (the old one is kept as config.yaml.bak)")
        write_text(target.with_name("config.yaml.bak"), target.read_text())
    write_text(target, text)
    return target, True
