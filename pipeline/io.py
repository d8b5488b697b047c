"""Writing stage outputs so that a failed stage leaves nothing half-written behind."""

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_dir(path: str | Path):
    """Yield a temporary folder beside `path`; it replaces `path` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    tmp.rename(final)


def write_json(path: str | Path, obj) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.rename(final)


def read_json(path: str | Path):
    return json.loads(Path(path).read_text())


def save_arrays(folder: Path, **arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)


def load_arrays(folder: str | Path, *names: str, mmap: bool = False) -> list[np.ndarray]:
    mode = "r" if mmap else None
    return [np.load(Path(folder) / f"{name}.npy", mmap_mode=mode) for name in names]
