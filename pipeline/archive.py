"""Read the CIFAR-10 python archive (cifar-10-python.tar.gz) without trusting it.

The members are read from the gzip stream in memory, never extracted to disk, and the batch
pickles are loaded with an unpickler that can only rebuild numpy arrays.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import numpy as np

BATCH_DIR = "cifar-10-batches-py"
TRAIN_MEMBERS = tuple(f"{BATCH_DIR}/data_batch_{i}" for i in range(1, 6))
TEST_MEMBER = f"{BATCH_DIR}/test_batch"
META_MEMBER = f"{BATCH_DIR}/batches.meta"
REQUIRED_MEMBERS = (*TRAIN_MEMBERS, TEST_MEMBER, META_MEMBER)

NUM_CLASSES = 10
IMAGE_SIDE = 32
CHANNELS = 3
ROW_LENGTH = CHANNELS * IMAGE_SIDE * IMAGE_SIDE

# A real batch member is about 31 MB; the cap stops a forged header from making us
# allocate gigabytes before any content check can run.
MAX_MEMBER_BYTES = 64 * 1024 * 1024
MD5_CHUNK_BYTES = 1024 * 1024

# Taken from numpy itself rather than imported from numpy.core, which numpy 2 deprecates;
# this is the same function whichever module path the pickle names.
_RECONSTRUCT = np.empty(0).__reduce__()[0]

ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class ArchiveError(Exception):
    """The CIFAR-10 archive is missing, corrupt, tampered with or not in the expected format."""


@dataclass(frozen=True, eq=False)
class Cifar10:
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    label_names: list[str]


def file_md5(path: str | os.PathLike[str]) -> str:
    """Hex md5 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with _open_binary(Path(path)) as stream:
        for chunk in iter(lambda: stream.read(MD5_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: str | os.PathLike[str], accepted: dict[str, str]) -> str:
    """Return the name of the source in ``accepted`` whose md5 matches the file at ``path``."""
    if not accepted:
        raise ValueError("accepted must map at least one source name to an md5")
    path = Path(path)
    found = file_md5(path)
    for source, md5 in accepted.items():
        if md5.strip().lower() == found:
            return source
    expected = ", ".join(f"{source}={md5}" for source, md5 in accepted.items())
    size = path.stat().st_size
    raise ArchiveError(
        f"{path}: md5 mismatch: expected one of {expected}; found {found} (size {size} bytes)"
    )


def read_cifar10(path: str | os.PathLike[str]) -> Cifar10:
    """Load train and test splits as (n, 32, 32, 3) uint8 images and int64 labels."""
    path = Path(path)
    blobs = _read_members(path)
    label_names = _parse_meta(path, blobs.pop(META_MEMBER))
    X_train, y_train = _load_split(path, blobs, TRAIN_MEMBERS)
    X_test, y_test = _load_split(path, blobs, (TEST_MEMBER,))
    return Cifar10(X_train, y_train, X_test, y_test, label_names)


def _open_binary(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError as err:
        raise ArchiveError(f"archive not found: {path}") from err
    except OSError as err:
        raise ArchiveError(f"cannot read archive {path}: {err}") from err


def _read_members(path: Path) -> dict[str, bytes]:
    """One pass over the gzip stream: check every member, keep the bytes of the required ones."""
    blobs: dict[str, bytes] = {}
    with _open_binary(path) as raw:
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    for member in tar:
                        name = _checked_name(path, member)
                        if name in REQUIRED_MEMBERS:
                            _keep_member(path, tar, member, name, blobs)
                # The tar end marker comes before the gzip trailer; reading on to the end
                # makes gzip verify its CRC and length.
                while stream.read(MD5_CHUNK_BYTES):
                    pass
        except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise ArchiveError(
                f"{path}: archive is corrupt or truncated ({type(err).__name__}: {err})"
            ) from err
    missing = [name for name in REQUIRED_MEMBERS if name not in blobs]
    if missing:
        raise ArchiveError(f"{path}: missing member(s): {', '.join(missing)}")
    return blobs


def _checked_name(path: Path, member: tarfile.TarInfo) -> str:
    """Normalised member name, or ArchiveError if the member could escape or is not plain."""
    name = PurePosixPath(member.name)
    if name.is_absolute():
        problem = "has an absolute path"
    elif ".." in name.parts:
        problem = "has a '..' path component"
    elif name.parts[:1] != (BATCH_DIR,):
        problem = f"is outside {BATCH_DIR}/"
    elif not (member.isfile() or member.isdir()):
        problem = f"is a {_member_kind(member)}; only regular files and directories are allowed"
    else:
        return str(name)
    raise ArchiveError(f"{path}: refusing tampered archive: member {member.name!r} {problem}")


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symlink (-> {member.linkname!r})"
    if member.islnk():
        return f"hard link (-> {member.linkname!r})"
    if member.ischr() or member.isblk():
        return "device"
    if member.isfifo():
        return "FIFO"
    return f"special member (tar type {member.type!r})"


def _keep_member(
    path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, blobs: dict[str, bytes]
) -> None:
    if name in blobs:
        raise ArchiveError(f"{path}: refusing tampered archive: member {name} appears twice")
    if not member.isfile():
        raise ArchiveError(f"{path}: member {name} is not a regular file")
    if member.size > MAX_MEMBER_BYTES:
        raise ArchiveError(
            f"{path}: member {name} is too large: expected at most {MAX_MEMBER_BYTES} bytes, "
            f"found {member.size}"
        )
    extracted = tar.extractfile(member)
    assert extracted is not None  # regular files always have content
    blobs[name] = extracted.read()


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else, so a pickle runs no code."""

    def __init__(self, blob: bytes, where: str) -> None:
        # encoding="bytes" keeps the Python 2 str keys and pixel data as bytes.
        super().__init__(io.BytesIO(blob), encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ArchiveError(
                f"{self._where}: refusing pickle: forbidden global {module}.{name}"
            ) from None


def _unpickle_dict(path: Path, name: str, blob: bytes) -> dict[Any, Any]:
    where = f"{path}: member {name}"
    try:
        obj = _ArrayUnpickler(blob, where).load()
    except ArchiveError:
        raise
    except Exception as err:  # a malformed pickle can fail with almost any exception type
        raise ArchiveError(
            f"{where} is not a valid pickle ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(obj, dict):
        raise ArchiveError(f"{where}: expected a dict, found {type(obj).__name__}")
    return obj


def _parse_meta(path: Path, blob: bytes) -> list[str]:
    meta = _unpickle_dict(path, META_MEMBER, blob)
    where = f"{path}: member {META_MEMBER}"
    names = meta.get(b"label_names")
    if not isinstance(names, list):
        raise ArchiveError(f"{where}: expected a list under b'label_names', found {names!r:.80}")
    if len(names) != NUM_CLASSES:
        raise ArchiveError(
            f"{where}: expected {NUM_CLASSES} label_names, found {len(names)}: {names!r:.200}"
        )
    return [_decode_name(where, name) for name in names]


def _decode_name(where: str, name: Any) -> str:
    if isinstance(name, str):
        return name
    if isinstance(name, bytes):
        try:
            return name.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ArchiveError(f"{where}: label name {name!r} is not UTF-8") from err
    raise ArchiveError(f"{where}: expected label names as bytes, found {type(name).__name__}")


def _load_split(
    path: Path, blobs: dict[str, bytes], names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in names:
        # pop: free each ~31 MB pickle as soon as its arrays exist.
        batch = _unpickle_dict(path, name, blobs.pop(name))
        batch_images, batch_labels = _check_batch(f"{path}: member {name}", batch)
        images.append(_rows_to_hwc(batch_images))
        labels.append(batch_labels)
    # Concatenating transposed views would keep their strided layout; writing into a fresh
    # C-ordered array gives contiguous HWC images in a single copy.
    total = sum(len(batch_labels) for batch_labels in labels)
    out = np.empty((total, IMAGE_SIDE, IMAGE_SIDE, CHANNELS), dtype=np.uint8)
    np.concatenate(images, out=out)
    return out, np.concatenate(labels)


def _check_batch(where: str, batch: dict[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The batch's (n, 3072) uint8 rows and (n,) int64 labels, after checking both."""
    for key in (b"data", b"labels"):
        if key not in batch:
            found = sorted(map(repr, batch))
            raise ArchiveError(f"{where}: missing key {key!r}; found keys {', '.join(found)}")
    labels = _check_labels(where, batch[b"labels"])
    data = batch[b"data"]
    expected_shape = (len(labels), ROW_LENGTH)
    if not isinstance(data, np.ndarray):
        raise ArchiveError(
            f"{where}: expected data as a uint8 array of shape {expected_shape}, "
            f"found {type(data).__name__}"
        )
    if data.dtype != np.uint8 or data.shape != expected_shape:
        raise ArchiveError(
            f"{where}: expected data as a uint8 array of shape {expected_shape}, "
            f"found {data.dtype} array of shape {data.shape}"
        )
    return data, labels


def _check_labels(where: str, labels: Any) -> np.ndarray:
    if not isinstance(labels, list) or not labels:
        raise ArchiveError(f"{where}: expected labels as a non-empty list, found {labels!r:.80}")
    values = np.asarray(labels)
    # kind "b" (bools) is refused too: True would otherwise pass as class 1.
    if values.ndim != 1 or values.dtype.kind not in "iu":
        raise ArchiveError(
            f"{where}: expected labels as a list of ints, found {values.dtype} "
            f"values of shape {values.shape}"
        )
    bad = np.flatnonzero((values < 0) | (values >= NUM_CLASSES))
    if bad.size:
        first = int(bad[0])
        raise ArchiveError(
            f"{where}: expected labels in 0..{NUM_CLASSES - 1}, found label {labels[first]} "
            f"at index {first} ({bad.size} out of range)"
        )
    return values.astype(np.int64, copy=False)


def _rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """(n, 3072) rows holding R, G and B planes -> (n, 32, 32, 3) view; the caller copies."""
    planes = rows.reshape(-1, CHANNELS, IMAGE_SIDE, IMAGE_SIDE)
    return planes.transpose(0, 2, 3, 1)
