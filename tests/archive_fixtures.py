"""Tiny CIFAR-10 python archives, genuine or deliberately broken, for the archive tests."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import re
import shlex
import struct
import tarfile
from pathlib import Path

import numpy as np

from pipeline.archive import Cifar10

BATCH_DIR = "cifar-10-batches-py"
LABEL_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]
TRAIN_NAMES = [f"data_batch_{i}" for i in range(1, 6)]
# 2010-01-01; with gzip mtime 0 the same arguments always give the same bytes.
MTIME = 1262304000

BAD_LABEL = 12
BAD_LABEL_MEMBER = "data_batch_2"
BAD_LABEL_INDEX = 3
BAD_SHAPE_MEMBER = "data_batch_3"
MALICIOUS_MEMBER = "data_batch_1"

# The real archive names numpy.core.multiarray; numpy 2 writes numpy._core.multiarray.
LEGACY_NUMPY_MODULE = "numpy.core.multiarray"
NUMPY_MODULES = (LEGACY_NUMPY_MODULE, "numpy._core.multiarray")
_RECONSTRUCT_GLOBAL = re.compile(rb"cnumpy\.(?:_core|core)\.multiarray\n_reconstruct\n")

TAMPERS = (
    "os_system",
    "eval",
    "traversal",
    "absolute",
    "outside_dir",
    "symlink",
    "hardlink",
    "device",
    "duplicate",
    "missing_test_batch",
    "bad_label",
    "bad_shape",
)


class _Py2StringPickler(pickle._Pickler):
    """Protocol-2 pickler that writes bytes with Python 2's str opcodes, as the real files do.

    Python 3's own protocol-2 pickler writes bytes as a call to _codecs.encode, a global the
    real archive never uses and the reader refuses.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object, numpy_module: str = LEGACY_NUMPY_MODULE) -> bytes:
    """Pickle ``obj`` like the real batches, naming ``_reconstruct`` under ``numpy_module``."""
    buffer = io.BytesIO()
    _Py2StringPickler(buffer, protocol=2).dump(obj)
    # A protocol-2 GLOBAL is a text line with no length or offset to fix up, so the module
    # numpy wrote (it depends on the installed numpy) can be swapped in place.
    line = b"c" + numpy_module.encode() + b"\n_reconstruct\n"
    return _RECONSTRUCT_GLOBAL.sub(line, buffer.getvalue())


class _ShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Eval:
    def __init__(self, expression: str) -> None:
        self.expression = expression

    def __reduce__(self):
        return (eval, (self.expression,))


def marker_path(archive: Path) -> Path:
    """The file a malicious pickle in ``archive`` would create if it were ever run."""
    return Path(archive).with_name(Path(archive).name + ".pwned")


def make_archive(
    path: Path,
    n_per_batch: int = 20,
    seed: int = 0,
    *,
    tamper: str | None = None,
    numpy_module: str = LEGACY_NUMPY_MODULE,
) -> Cifar10:
    """Write a small archive in the official layout to ``path``; return what it holds.

    ``tamper`` (one of TAMPERS) breaks the archive in one specific way. ``numpy_module`` is
    where the pickles say numpy's ``_reconstruct`` lives (one of NUMPY_MODULES).
    """
    if tamper is not None and tamper not in TAMPERS:
        raise ValueError(f"unknown tamper {tamper!r}; choose from {TAMPERS}")
    path = Path(path)
    rng = np.random.default_rng(seed)
    train = [_random_split(rng, n_per_batch) for _ in TRAIN_NAMES]
    test = _random_split(rng, n_per_batch)

    batches = {name: _batch_dict(name, *split) for name, split in zip(TRAIN_NAMES, train)}
    batches["test_batch"] = _batch_dict("test_batch", *test)
    members = {name: py2_pickle(batch, numpy_module) for name, batch in batches.items()}
    members["batches.meta"] = py2_pickle(_meta_dict())
    members["readme.html"] = b"<html><body>tiny CIFAR-10 fixture</body></html>\n"
    extra: list[tuple[tarfile.TarInfo, bytes]] = []

    if tamper is not None:
        _apply_tamper(tamper, path, batches, members, extra)
    _write_tar(path, members, extra)

    return Cifar10(
        X_train=np.concatenate([images for images, _ in train]),
        y_train=np.concatenate([labels for _, labels in train]),
        X_test=test[0],
        y_test=test[1],
        label_names=list(LABEL_NAMES),
    )


def hwc_to_rows(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) images -> (n, 3072) rows: all R values, then all G, then all B."""
    n = len(images)
    red = images[..., 0].reshape(n, 1024)
    green = images[..., 1].reshape(n, 1024)
    blue = images[..., 2].reshape(n, 1024)
    return np.hstack([red, green, blue])


def write_random_bytes(path: Path, size: int = 4096, seed: int = 0) -> None:
    Path(path).write_bytes(np.random.default_rng(seed).bytes(size))


def write_truncated(source: Path, path: Path) -> None:
    """Copy the first half of ``source`` to ``path``."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def write_flipped_byte(source: Path, path: Path, offset: int) -> None:
    """Copy ``source`` to ``path`` with the byte at ``offset`` inverted (negative counts back)."""
    data = bytearray(Path(source).read_bytes())
    data[offset] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def _random_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.int64)
    return images, labels


def _batch_dict(name: str, images: np.ndarray, labels: np.ndarray) -> dict[bytes, object]:
    return {
        b"batch_label": f"fixture {name}".encode(),
        b"labels": [int(label) for label in labels],
        b"data": hwc_to_rows(images),
        b"filenames": [f"{name}_{i}.png".encode() for i in range(len(labels))],
    }


def _meta_dict() -> dict[bytes, object]:
    return {
        b"label_names": [name.encode() for name in LABEL_NAMES],
        b"num_cases_per_batch": 10000,
        b"num_vis": 3072,
    }


def _apply_tamper(
    tamper: str,
    path: Path,
    batches: dict[str, dict[bytes, object]],
    members: dict[str, bytes],
    extra: list[tuple[tarfile.TarInfo, bytes]],
) -> None:
    marker = str(marker_path(path))
    if tamper == "os_system":
        members[MALICIOUS_MEMBER] = pickle.dumps(
            _ShellCommand(f"touch {shlex.quote(marker)}"), protocol=2
        )
    elif tamper == "eval":
        members[MALICIOUS_MEMBER] = pickle.dumps(
            _Eval(f"open({marker!r}, 'w').close()"), protocol=2
        )
    elif tamper == "traversal":
        extra.append(_file_entry("../evil", b"evil"))
    elif tamper == "absolute":
        extra.append(_file_entry("/tmp/evil", b"evil"))
    elif tamper == "outside_dir":
        extra.append(_file_entry("other-dir/evil", b"evil"))
    elif tamper == "symlink":
        extra.append(_link_entry(f"{BATCH_DIR}/evil_link", tarfile.SYMTYPE, "/etc/passwd"))
    elif tamper == "hardlink":
        extra.append(_link_entry(f"{BATCH_DIR}/evil_link", tarfile.LNKTYPE, "/etc/passwd"))
    elif tamper == "device":
        extra.append(_device_entry(f"{BATCH_DIR}/evil_device"))
    elif tamper == "duplicate":
        extra.append(_file_entry(f"{BATCH_DIR}/test_batch", members["data_batch_1"]))
    elif tamper == "missing_test_batch":
        del members["test_batch"]
    elif tamper == "bad_label":
        batch = dict(batches[BAD_LABEL_MEMBER])
        labels = list(batch[b"labels"])
        labels[BAD_LABEL_INDEX] = BAD_LABEL
        batch[b"labels"] = labels
        members[BAD_LABEL_MEMBER] = py2_pickle(batch)
    elif tamper == "bad_shape":
        batch = dict(batches[BAD_SHAPE_MEMBER])
        batch[b"data"] = np.ascontiguousarray(batch[b"data"][:, :-1])
        members[BAD_SHAPE_MEMBER] = py2_pickle(batch)


def _file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = MTIME
    return info, data


def _link_entry(name: str, kind: bytes, target: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mtime = MTIME
    return info, b""


def _device_entry(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    info.mtime = MTIME
    return info, b""


def _write_tar(
    path: Path, members: dict[str, bytes], extra: list[tuple[tarfile.TarInfo, bytes]]
) -> None:
    # The tampered entries go last, after every genuine member has been read, so the
    # reader must check the whole archive rather than stop once it has what it needs.
    directory = tarfile.TarInfo(BATCH_DIR)
    directory.type = tarfile.DIRTYPE
    directory.mode = 0o755
    directory.mtime = MTIME
    entries = [(directory, b"")]
    entries += [_file_entry(f"{BATCH_DIR}/{name}", data) for name, data in members.items()]
    entries += extra
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    with open(path, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0) as gz:
            gz.write(tar_bytes.getvalue())
