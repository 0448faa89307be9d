"""Atomic file output and provenance.

Every file cgflow writes goes through :func:`atomic_path`: the content is written to a
temporary file in the same folder and renamed over the target only when complete, so a
job killed at any moment leaves either the old file or the new one, never half of one.
Work folders go the same way (:func:`remove_tree`): whole, or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0
"""Long work (MD, training) logs a line of progress at most this often."""


class InputError(ValueError):
    """An input file or argument that is missing or not what the command needs (another
    campaign's, another kind of file): ``cgflow`` prints it as one line naming the file."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs are meant to be shared
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete the folder ``path`` (if it exists) so that a kill at any moment leaves it whole
    or gone: it is renamed out of the way first, then deleted. A resume trusts the checkpoints
    it finds in a work folder, so one with some of them deleted must never be left."""
    path = Path(path)
    trash = path.with_name(f".{path.name}.removed")
    shutil.rmtree(trash, ignore_errors=True)  # left by a kill during an earlier removal
    if path.exists():
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def reading(path: str | os.PathLike, kind: str, errors: tuple = (OSError, ValueError, KeyError)) -> Iterator[None]:
    """Turn a failure to read ``path`` as a ``kind`` (``errors``) into an :class:`InputError`
    naming both; a missing file stays a FileNotFoundError, which ``cgflow`` reports as it is."""
    try:
        yield
    except FileNotFoundError:
        raise
    except errors as exc:
        raise InputError(f"{path} is not a {kind}: {' '.join(str(exc).split())[:200]}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def config_hash(config: dict) -> str:
    """A short, stable hash of a (resolved) config dict."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour decides a result."""
    from importlib import metadata

    out = {}
    for name in ("cgflow", "openmm", "torch", "numpy", "pandas", "mdtraj", "pymbar", "snakemake"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_parquet(table, path: str | os.PathLike, provenance: dict) -> None:
    """Write a DataFrame as parquet with ``provenance`` (JSON) in the metadata key ``cgflow``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    meta = dict(arrow.schema.metadata or {})
    meta[b"cgflow"] = json.dumps(provenance).encode()
    with atomic_path(path) as tmp:
        pq.write_table(arrow.replace_schema_metadata(meta), tmp)


def read_provenance(path: str | os.PathLike) -> dict:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"cgflow", b"{}"))


def write_torch(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` a dict of tensors and plain data (a model, a training checkpoint)
    atomically: a job killed while writing it keeps the previous file."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def write_npz(path: str | os.PathLike, **arrays) -> None:
    """``numpy.savez`` atomically (uncompressed: the arrays are small or already dense)."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def load_checkpoint(path: str | os.PathLike | None, signature: str | None = None) -> dict | None:
    """The training checkpoint at ``path`` (tensors and plain data only: ``weights_only``), or
    None when there is none, or when ``signature`` is given and the checkpoint was written for
    another one (another model, data or settings: then with a warning, as it will be replaced)."""
    if path is None or not Path(path).is_file():
        return None
    import torch

    state = torch.load(path, weights_only=True)
    if signature is not None and state.get("signature") != signature:
        log.warning("ignoring checkpoint %s: written for other data or settings", path)
        return None
    return state
