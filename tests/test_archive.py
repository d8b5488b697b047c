import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from archive_fixtures import (
    BAD_LABEL,
    BAD_LABEL_INDEX,
    BAD_LABEL_MEMBER,
    BAD_SHAPE_MEMBER,
    LABEL_NAMES,
    MALICIOUS_MEMBER,
    NUMPY_MODULES,
    make_archive,
    marker_path,
    write_flipped_byte,
    write_random_bytes,
    write_truncated,
)
from pipeline.archive import ArchiveError, file_md5, read_cifar10, verify_md5

REAL_ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar-10-python.tar.gz"
N_PER_BATCH = 20


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    expected = make_archive(path, n_per_batch=N_PER_BATCH, seed=0)
    return path, expected


def raw_rows(path, member):
    """The (n, 3072) rows of one of our own fixture's batches, read with plain pickle."""
    with tarfile.open(path, "r:gz") as tar:
        batch = pickle.load(tar.extractfile(f"cifar-10-batches-py/{member}"), encoding="bytes")
    return batch[b"data"]


@pytest.mark.parametrize("numpy_module", NUMPY_MODULES)
def test_round_trip_returns_what_the_fixture_wrote(tmp_path, numpy_module):
    path = tmp_path / "cifar.tar.gz"
    expected = make_archive(path, n_per_batch=N_PER_BATCH, seed=3, numpy_module=numpy_module)

    data = read_cifar10(path)

    assert data.X_train.shape == (5 * N_PER_BATCH, 32, 32, 3)
    assert data.X_test.shape == (N_PER_BATCH, 32, 32, 3)
    assert data.X_train.dtype == np.uint8 and data.X_test.dtype == np.uint8
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert data.X_train.flags.c_contiguous and data.X_test.flags.c_contiguous
    np.testing.assert_array_equal(data.X_train, expected.X_train)
    np.testing.assert_array_equal(data.y_train, expected.y_train)
    np.testing.assert_array_equal(data.X_test, expected.X_test)
    np.testing.assert_array_equal(data.y_test, expected.y_test)
    assert data.label_names == LABEL_NAMES


def test_pixel_comes_from_r_g_b_planes_in_row_major_order(archive):
    path, _ = archive
    image, y, x = 7, 5, 9
    rows = raw_rows(path, "data_batch_2")
    offset = y * 32 + x
    red, green, blue = rows[image, offset], rows[image, 1024 + offset], rows[image, 2048 + offset]

    data = read_cifar10(path)

    pixel = data.X_train[N_PER_BATCH + image, y, x]
    assert pixel.tolist() == [red, green, blue]
    assert len({int(red), int(green), int(blue)}) > 1, "pick a pixel whose channels differ"


def test_test_split_last_pixel_is_last_value_of_each_plane(archive):
    path, _ = archive
    rows = raw_rows(path, "test_batch")

    data = read_cifar10(path)

    assert data.X_test[-1, 31, 31].tolist() == [rows[-1, 1023], rows[-1, 2047], rows[-1, 3071]]


def test_reading_writes_nothing_to_disk(archive, tmp_path):
    path, _ = archive
    before = sorted(tmp_path.rglob("*"))

    read_cifar10(path)

    assert sorted(tmp_path.rglob("*")) == before


def test_file_md5_matches_hashlib(archive):
    path, _ = archive
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()


def test_verify_md5_returns_matching_source(archive):
    path, _ = archive
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    accepted = {"official": "c58f30108f718f92721af3b95e74349a", "fixture": md5.upper()}

    assert verify_md5(path, accepted) == "fixture"


def test_verify_md5_mismatch_names_expected_found_and_size(archive):
    path, _ = archive
    found = hashlib.md5(path.read_bytes()).hexdigest()
    accepted = {
        "official": "c58f30108f718f92721af3b95e74349a",
        "shared_mirror": "d3b1b735e0545e72f0934aadb526e1b1",
    }

    with pytest.raises(ArchiveError) as caught:
        verify_md5(path, accepted)

    message = str(caught.value)
    assert "official=c58f30108f718f92721af3b95e74349a" in message
    assert "shared_mirror=d3b1b735e0545e72f0934aadb526e1b1" in message
    assert f"found {found}" in message
    assert f"{path.stat().st_size} bytes" in message


@pytest.mark.parametrize(
    "call", [file_md5, read_cifar10, lambda path: verify_md5(path, {"official": "0" * 32})]
)
def test_missing_file_names_the_path(tmp_path, call):
    path = tmp_path / "absent.tar.gz"
    with pytest.raises(ArchiveError, match="not found") as caught:
        call(path)
    assert str(path) in str(caught.value)


def test_random_bytes_are_reported_as_corrupt(tmp_path):
    path = tmp_path / "noise.tar.gz"
    write_random_bytes(path, size=4096, seed=1)

    with pytest.raises(ArchiveError, match="corrupt or truncated") as caught:
        read_cifar10(path)
    assert str(path) in str(caught.value)


def test_truncated_archive_is_reported_as_corrupt(archive, tmp_path):
    path, _ = archive
    truncated = tmp_path / "half.tar.gz"
    write_truncated(path, truncated)

    with pytest.raises(ArchiveError, match="corrupt or truncated") as caught:
        read_cifar10(truncated)
    assert str(truncated) in str(caught.value)


def test_damaged_gzip_crc_is_reported_as_corrupt(archive, tmp_path):
    # The CRC sits in the gzip trailer, after the tar end marker, so this only fails if the
    # reader goes on to the end of the stream.
    path, _ = archive
    damaged = tmp_path / "crc.tar.gz"
    write_flipped_byte(path, damaged, offset=-6)

    with pytest.raises(ArchiveError, match="corrupt or truncated.*CRC check failed"):
        read_cifar10(damaged)


@pytest.mark.parametrize(
    ("tamper", "fragments"),
    [
        ("traversal", ["'../evil'", "'..' path component"]),
        ("absolute", ["'/tmp/evil'", "absolute path"]),
        ("outside_dir", ["'other-dir/evil'", "outside cifar-10-batches-py/"]),
        ("symlink", ["'cifar-10-batches-py/evil_link'", "symlink", "/etc/passwd"]),
        ("hardlink", ["'cifar-10-batches-py/evil_link'", "hard link"]),
        ("device", ["'cifar-10-batches-py/evil_device'", "device"]),
        ("duplicate", ["cifar-10-batches-py/test_batch", "appears twice"]),
        ("missing_test_batch", ["missing member", "cifar-10-batches-py/test_batch"]),
        (
            "bad_label",
            [f"cifar-10-batches-py/{BAD_LABEL_MEMBER}", "expected labels in 0..9",
             f"found label {BAD_LABEL} at index {BAD_LABEL_INDEX}"],
        ),
        (
            "bad_shape",
            [f"cifar-10-batches-py/{BAD_SHAPE_MEMBER}",
             f"expected data as a uint8 array of shape ({N_PER_BATCH}, 3072)",
             f"found uint8 array of shape ({N_PER_BATCH}, 3071)"],
        ),
    ],
)
def test_tampered_archive_is_refused_with_specific_reason(tmp_path, tamper, fragments):
    path = tmp_path / f"{tamper}.tar.gz"
    make_archive(path, n_per_batch=N_PER_BATCH, tamper=tamper)

    with pytest.raises(ArchiveError) as caught:
        read_cifar10(path)

    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("tamper", "forbidden"),
    # pickle records where the function really lives (posix on Linux) and, for protocol 2,
    # Python 2's name for builtins.
    [("os_system", f"{os.system.__module__}.system"), ("eval", "__builtin__.eval")],
)
def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path, tamper, forbidden):
    path = tmp_path / f"{tamper}.tar.gz"
    make_archive(path, n_per_batch=N_PER_BATCH, tamper=tamper)

    with pytest.raises(ArchiveError) as caught:
        read_cifar10(path)

    message = str(caught.value)
    assert f"forbidden global {forbidden}" in message
    assert f"cifar-10-batches-py/{MALICIOUS_MEMBER}" in message
    assert not marker_path(path).exists()


@pytest.mark.parametrize("tamper", ["os_system", "eval"])
def test_malicious_payload_would_run_under_plain_pickle(tmp_path, tamper):
    # Control for the test above: without it, a payload that never worked would also pass.
    path = tmp_path / f"{tamper}.tar.gz"
    make_archive(path, n_per_batch=N_PER_BATCH, tamper=tamper)
    with tarfile.open(path, "r:gz") as tar:
        member = tar.extractfile(f"cifar-10-batches-py/{MALICIOUS_MEMBER}")
        pickle.load(member, encoding="bytes")

    assert marker_path(path).exists()


@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason=f"{REAL_ARCHIVE} not present")
def test_real_archive():
    data = read_cifar10(REAL_ARCHIVE)

    assert data.X_train.shape == (50000, 32, 32, 3) and data.X_train.dtype == np.uint8
    assert data.X_test.shape == (10000, 32, 32, 3) and data.X_test.dtype == np.uint8
    assert data.y_train.shape == (50000,) and data.y_train.dtype == np.int64
    assert data.y_test.shape == (10000,) and data.y_test.dtype == np.int64
    assert np.bincount(data.y_train, minlength=10).tolist() == [5000] * 10
    assert np.bincount(data.y_test, minlength=10).tolist() == [1000] * 10
    assert data.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert data.y_test[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert data.label_names[0] == "airplane"
    assert data.label_names == LABEL_NAMES
