"""IDX files: exact round trip, and every kind of bad file is a UserError naming the file."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from data_helpers import make_idx_folder

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.idx import read_idx, write_idx
from itwinai_hpc.data.mnist import load_idx_folder


@pytest.mark.parametrize("name", ["x-idx3-ubyte", "x-idx3-ubyte.gz"])
def test_idx_round_trip_is_exact_raw_and_gzipped(tmp_path, name):
    a = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / name, a)), a)


def test_idx_folder_reads_all_four_files(tmp_path):
    arrays = make_idx_folder(tmp_path, n_train=50, n_test=20, gz=False)
    raw = load_idx_folder(tmp_path)
    assert np.array_equal(raw.train_images, arrays["train_images"])
    assert np.array_equal(raw.test_labels, arrays["test_labels"])
    assert np.issubdtype(raw.train_labels.dtype, np.integer)


def test_truncated_idx_file_is_an_error_naming_it(tmp_path):
    path = write_idx(tmp_path / "t-idx3-ubyte", np.zeros((10, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated") as e:
        read_idx(path)
    assert e.value.file == str(path)


def test_truncated_gzip_is_an_error_naming_it(tmp_path):
    path = write_idx(tmp_path / "t-idx3-ubyte.gz", np.ones((100, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match="truncated or corrupt") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_corrupt_gzip_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c-idx3-ubyte.gz"
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(UserError) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_wrong_magic_number_is_an_error_naming_it(tmp_path):
    path = tmp_path / "m-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x12\x34\x08\x03" + bytes(100)))
    with pytest.raises(UserError, match="wrong magic number") as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_swapped_images_and_labels_are_an_error_naming_the_file(tmp_path):
    make_idx_folder(tmp_path, n_train=10, n_test=10, gz=False)
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    tmp = tmp_path / "swap"
    images.rename(tmp), labels.rename(images), tmp.rename(labels)
    with pytest.raises(UserError, match="dimension") as e:
        load_idx_folder(tmp_path)
    assert str(images) in str(e.value)


def test_image_and_label_counts_that_disagree_are_an_error_naming_both(tmp_path):
    make_idx_folder(tmp_path, n_train=10, n_test=10)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(9, np.uint8))
    with pytest.raises(UserError, match="10 images but 9 labels") as e:
        load_idx_folder(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value) and str(labels) in str(e.value)


def test_a_missing_idx_file_is_an_error_naming_the_folder_and_the_file(tmp_path):
    make_idx_folder(tmp_path, n_train=10, n_test=10)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte") as e:
        load_idx_folder(tmp_path)
    assert e.value.file == str(tmp_path)
