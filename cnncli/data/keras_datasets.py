"""`mnist`, `fashion_mnist`, `cifar10`, `cifar100`: the Keras datasets, offline first.

Where the arrays come from, in order:
1. `data.path`, an offline copy: mnist.npz (or its folder), a folder of IDX
   files for Fashion-MNIST, the extracted cifar-10-batches-py /
   cifar-100-python folder;
2. for Fashion-MNIST, Debian's `dataset-fashion-mnist` package;
3. the file in Keras's cache ($KERAS_HOME/datasets, else ~/.keras/datasets),
   read here directly: Keras reads $KERAS_HOME only when it is first imported
   and rejects a cached file whose hash differs from its own copy's;
4. `keras.datasets.<name>.load_data()`, which downloads into that cache.
When that download fails, the error says which file to put where.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from cnncli import compat
from cnncli.config.schema import DataConfig
from cnncli.data import idx
from cnncli.data.base import DatasetInfo, Source, Splits, as_images, as_labels, digit_names
from cnncli.errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist
KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
CONNECT_TIMEOUT = 5  # seconds to reach the download host before giving up (offline machines fail fast)
READ_TIMEOUT = 60  # seconds a stalled download may hang; per socket operation, not the whole file

FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = (  # fine labels, in label order (they are alphabetical)
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray "
    "road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle "
    "wardrobe whale willow_tree wolf woman worm"
).split()

# name -> (input shape, class names, where Keras downloads from, how to place it in the cache by hand)
TABLE = {
    "mnist": ((28, 28, 1), digit_names(10), KERAS_ORIGIN + "mnist.npz", "download {origin} to {cache}/mnist.npz"),
    "fashion_mnist": (
        (28, 28, 1),
        FASHION_NAMES,
        KERAS_ORIGIN + "train-images-idx3-ubyte.gz",
        "download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
        "and t10k-labels-idx1-ubyte.gz from " + KERAS_ORIGIN + " into {cache}/fashion-mnist/ "
        "(or install Debian's dataset-fashion-mnist package)",
    ),
    "cifar10": (
        (32, 32, 3),
        CIFAR10_NAMES,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "download {origin} and extract it into {cache}, giving {cache}/cifar-10-batches-py/",
    ),
    "cifar100": (
        (32, 32, 3),
        CIFAR100_NAMES,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "download {origin} and extract it into {cache}, giving {cache}/cifar-100-python/",
    ),
}


def cache_dir() -> Path:
    """Keras's dataset cache, following $KERAS_HOME as it is now (Keras itself reads it once, at import)."""
    return compat.cache_dir("datasets")


# ---------------------------------------------------------------- readers of offline copies


def _read_mnist_npz(path: Path) -> tuple:
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["x_train"], f["y_train"], f["x_test"], f["y_test"]
    except KeyError as exc:
        raise DataError(
            f"{path}: not a Keras mnist.npz: no array {exc}; it needs x_train, y_train, x_test, y_test"
        ) from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc}); replace it with a fresh mnist.npz") from None


class _ArraysOnly(pickle.Unpickler):
    """CIFAR batches are pickles; let them build numpy arrays and nothing else.

    Keras guards its own reader the same way (keras/src/datasets/npz_utils.py),
    but that class is private, so it is repeated here.
    """

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),
    }  # how Python 3 writes bytes at pickle protocol 2 (re-pickled copies)

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load `{module}.{name}`")


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data, labels = np.asarray(batch["data"], np.uint8), np.asarray(batch[label_key])
        x = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)  # stored channels first
    except FileNotFoundError:
        raise DataError(f"{path}: missing; the extracted CIFAR folder is incomplete") from None
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, AttributeError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR batch ({type(exc).__name__}: {exc}); extract the archive again") from None
    return x, labels


def _read_cifar_folder(name: str, folder: Path) -> tuple:
    if name == "cifar10":
        parts = [_read_cifar_batch(folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
        x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        x_test, y_test = _read_cifar_batch(folder / "test_batch", "labels")
    else:
        x_train, y_train = _read_cifar_batch(folder / "train", "fine_labels")
        x_test, y_test = _read_cifar_batch(folder / "test", "fine_labels")
    return x_train, y_train, x_test, y_test


CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _find_cifar(name: str, root: Path) -> Path | None:
    """The batches folder at `root`, inside it, or inside Keras's extraction folder."""
    inner = CIFAR_FOLDERS[name]
    for folder in (root, root / inner, root / f"{inner}-target" / inner):
        if (folder / ("test_batch" if name == "cifar10" else "test")).is_file():
            return folder
    return None


def _from_path(name: str, path: Path) -> tuple:
    """Arrays from the user's offline copy at `data.path`."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; data.path for `{name}` must point at an offline copy")
    if name == "mnist":
        return _read_mnist_npz(path / "mnist.npz" if path.is_dir() else path)
    if name == "fashion_mnist":
        if not path.is_dir():
            raise DataError(f"{path}: for fashion_mnist, data.path must be the folder holding the 4 IDX files")
        return idx.read_folder(path)
    folder = _find_cifar(name, path) if path.is_dir() else None
    if folder is None:
        raise DataError(
            f"{path}: no extracted {CIFAR_FOLDERS[name]} folder here; extract "
            f"{urlsplit(TABLE[name][2]).path.rsplit('/', 1)[-1]} and point data.path at it"
        )
    return _read_cifar_folder(name, folder)


def _from_cache(name: str, cache: Path) -> tuple[tuple, Path] | None:
    """Arrays from Keras's cache when they are already there, else None."""
    if name == "mnist" and (cache / "mnist.npz").is_file():
        return _read_mnist_npz(cache / "mnist.npz"), cache / "mnist.npz"
    if name == "fashion_mnist" and (cache / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file():
        return idx.read_folder(cache / "fashion-mnist"), cache / "fashion-mnist"
    if name in CIFAR_FOLDERS:
        folder = _find_cifar(name, cache)
        if folder is not None:
            return _read_cifar_folder(name, folder), folder
    return None


def _download(name: str, cache: Path) -> tuple:
    """keras.datasets.<name>.load_data(), failing fast and with directions when offline."""
    _, _, origin, place = TABLE[name]
    host = urlsplit(origin).hostname
    how = f"to work offline, {place.format(origin=origin, cache=cache)}, or set data.path to an offline copy"
    if not urllib.request.getproxies():  # behind a proxy only urllib knows the way, so let it try
        try:
            socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            raise DataError(f"cannot download {name}: {host} is unreachable ({exc}); {how}") from None
    import keras  # only now: importing it costs seconds

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(READ_TIMEOUT)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its progress bar; we print nothing
            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as exc:  # Keras wraps network errors in a bare Exception
        raise DataError(f"cannot download {name} ({type(exc).__name__}: {exc}); {how}") from None
    finally:
        socket.setdefaulttimeout(previous)
    return x_train, y_train, x_test, y_test


def _arrays(name: str, cfg: DataConfig) -> tuple[tuple, str, list[str]]:
    if cfg.path:
        path = Path(cfg.path).expanduser()
        return _from_path(name, path), str(path), []
    if name == "fashion_mnist" and DEBIAN_FASHION_MNIST.is_dir():
        return idx.read_folder(DEBIAN_FASHION_MNIST), str(DEBIAN_FASHION_MNIST), []
    cache = cache_dir()
    found = _from_cache(name, cache)
    if found is not None:
        return found[0], str(found[1]), []
    arrays = _download(name, cache)
    return arrays, f"keras.datasets.{name}", [f"downloaded {name} into Keras's cache"]


def _load(name: str, cfg: DataConfig, seed: int) -> Splits:
    (x_train, y_train, x_test, y_test), source, notes = _arrays(name, cfg)
    shape, names, _, _ = TABLE[name]
    splits = Splits(
        as_images(x_train, f"{source}: x_train"),
        as_labels(y_train, f"{source}: y_train"),
        as_images(x_test, f"{source}: x_test"),
        as_labels(y_test, f"{source}: y_test"),
        list(names),
        source,
        notes,
    )
    for split, x, y in (("train", splits.x_train, splits.y_train), ("test", splits.x_test, splits.y_test)):
        if x.shape[1:] != shape or len(x) != len(y) or (y.size and y.max() >= len(names)):
            raise DataError(
                f"{source}: {split} split is not {name}: images {x.shape[1:]} (expected {shape}), "
                f"{len(x)} images for {len(y)} labels, labels up to {y.max() if y.size else '-'} "
                f"(expected < {len(names)})"
            )
    return splits


def _source(name: str) -> Source:
    shape, names, _, _ = TABLE[name]
    return Source(
        lambda cfg, seed: _load(name, cfg, seed),
        lambda cfg: DatasetInfo(shape, len(names), list(names)),
        f"keras.datasets.{name}, from data.path, Keras's cache, or a download",
    )


SOURCES = {name: _source(name) for name in TABLE}
