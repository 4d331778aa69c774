"""Image-classification datasets of the paper, plus offline ones

``build_classification_data(name, ...)`` returns train and validation datasets yielding
``(float tensor (C, H, W), int label)`` and a :class:`DataInfo`. Pixels are scaled to [0, 1],
then ``input_norm`` (statistics of the training split only) optionally centres them:

- ``'none'``: [0, 1].
- ``'pixel_mean'``: minus the per-pixel mean of the training images (the authors' simple-CNN
  script: ``x / 255 - mean(x_train / 255, axis=0)``).
- ``'standardize'``: ``(x - 127 / 255) / std`` with ``std`` over all training pixels (the authors'
  ResNet script: ``(x - 127) / std(x_train)`` on 0–255 pixels).

Datasets:

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes; works
  offline, the default), split 80/20 stratified with ``split_seed``.
- ``synthetic``: class templates plus noise drawn from ``split_seed`` (for tests; no files at all).
- ``mnist``, ``fashion_mnist``: the four original idx files (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), gzipped or not,
  read where they are (:func:`idx_folders`): ``data_dir`` itself, torchvision's
  ``<data_dir>/FashionMNIST/raw`` (``MNIST/raw``), ``<data_dir>/fashion-mnist`` (``mnist``) and, with the
  default ``data_dir``, Debian's ``/usr/share/datasets/fashion-mnist`` (``apt-get install
  dataset-fashion-mnist``). No md5 check: each file's header, size, shape and label range are checked
  instead (:func:`read_idx_file`), so re-compressed copies such as Debian's load. Missing everywhere,
  torchvision downloads them into ``<data_dir>/<FashionMNIST|MNIST>/raw`` when ``download``.
  Validation = the official test split (as in the paper's code).
- ``cifar10``: torchvision, validation = the official test split.
- ``mnist_cluttered``: generated from MNIST (official split), the digit placed at a random
  position on a 60×60 canvas with 8×8 clutter patches cut from other digits (Jaderberg et al.
  2015), deterministic per sample index (fixed seeds: the same set for every run).
- ``lfw``: scikit-learn ``fetch_lfw_people(min_faces_per_person=20)`` in
  ``<data_dir>/lfw_home``, 62 people, 3023 images of 62×47 pixels (scikit-learn already scales
  them to [0, 1]), split 2267 / 756 stratified with ``split_seed``.

``digits``, ``synthetic`` and ``lfw`` have no official split (:data:`RESPLIT_DATASETS`):
``split_seed`` draws it, so a new seed is a new split. ``train_subset`` (the low-data setting) trains on
a stratified subset of that many training images, drawn with ``split_seed`` (the same subset for every
call with the same seed); the validation split stays whole. A dataset that is neither on disk nor
downloadable raises :class:`DatasetNotFoundError` naming the dataset, the directory searched and
how to provide it. Augmentation (``augment=True``) is the authors' Keras
``ImageDataGenerator(width_shift_range=shift, height_shift_range=shift, horizontal_flip=True,
fill_mode='nearest')`` done with Albumentations: uniform shifts of up to ``augment_shift`` of the
width and height, borders filled by replicating the edge pixels, a horizontal flip with
probability 0.5; its random draws come from torch's RNG, so runs and resumed runs repeat.
"""

import contextlib
import gzip
import math
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    'CLASSIFICATION_DATASETS',
    'IDX_DATASETS',
    'INPUT_NORMS',
    'RESPLIT_DATASETS',
    'ArrayDataset',
    'ClutteredDataset',
    'DataInfo',
    'DatasetFileError',
    'DatasetNotFoundError',
    'build_classification_data',
    'build_transform',
    'clutter_canvas',
    'dataset_not_found',
    'find_idx_files',
    'idx_folders',
    'read_idx_file',
    'removing_empty_folders_on_failure',
    'stratified_subset',
]

CLASSIFICATION_DATASETS = ('digits', 'synthetic', 'mnist', 'fashion_mnist', 'cifar10', 'mnist_cluttered', 'lfw')
RESPLIT_DATASETS = ('digits', 'synthetic', 'lfw')  # no official split: ``split_seed`` draws one
INPUT_NORMS = ('none', 'pixel_mean', 'standardize')


class DatasetNotFoundError(FileNotFoundError):
    """A dataset missing from disk that could not be downloaded."""


class DatasetFileError(DatasetNotFoundError):
    """A dataset file that is there but is not what it should be (truncated, another format, bad labels):
    the dataset was not found intact. The message names the file."""


@dataclass(frozen=True)
class IdxDataset:
    """Where an idx-format dataset lives: torchvision's class (and its folder name), the folder Debian's
    package installs and that package."""

    torchvision_class: str
    folder: str  # <data_dir>/<folder> is searched too (Debian's folder name)
    system_dirs: Tuple[str, ...] = ()  # searched with the default data_dir
    apt_package: Optional[str] = None


IDX_DATASETS: Dict[str, IdxDataset] = dict(
    mnist=IdxDataset('MNIST', 'mnist'),
    fashion_mnist=IdxDataset(
        'FashionMNIST', 'fashion-mnist', ('/usr/share/datasets/fashion-mnist',), 'dataset-fashion-mnist'
    ),
)
IDX_FILES = {  # (images, labels) of the training and the test split
    True: ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    False: ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
DEFAULT_DATA_DIR = 'data'  # build_classification_data's and the recipes' default data_dir
_IDX_MAGIC = dict(images=0x0803, labels=0x0801)  # unsigned bytes; 3 dimensions (images) or 1 (labels)


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a dataset."""

    name: str
    num_classes: int
    in_chans: int
    img_size: Tuple[int, int]  # (height, width)


def build_transform(img_size: Optional[int], augment: bool, shift: float = 0.2) -> Optional[A.Compose]:
    """Resize to ``img_size`` (when given) and the authors' Keras shift + flip augmentation: shifts
    up to ``shift`` of each side with the borders filled by edge replication (Keras' ``'nearest'``)."""
    steps = []
    if img_size is not None:
        steps.append(A.Resize(img_size, img_size))
    if augment:
        steps += [
            A.Affine(
                translate_percent={'x': (-shift, shift), 'y': (-shift, shift)}, border_mode=cv2.BORDER_REPLICATE, p=1.0
            ),
            A.HorizontalFlip(p=0.5),
        ]
    return A.Compose(steps, seed=0) if steps else None


class ArrayDataset(Dataset):
    """Images (N, H, W, C) float32 in [0, 1] and labels (N,) with an optional Albumentations transform.

    ``offset`` and ``scale`` (a number or an (H, W, C) array) normalize each image as
    ``(image - offset) / scale`` before the transform; ``indices`` are the samples' positions in
    the dataset they were split from.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Optional[A.Compose] = None,
        indices: Optional[np.ndarray] = None,
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f'images must be (N, H, W, C) with one label each, got {images.shape} and {len(labels)}')
        self.images = images.astype(np.float32, copy=False)
        self.labels = labels.astype(np.int64, copy=False)
        self.transform = transform
        self.indices = np.arange(len(labels)) if indices is None else np.asarray(indices)
        self.offset, self.scale = 0.0, 1.0

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def pixel_statistics(self) -> Tuple[np.ndarray, float]:
        """The per-pixel mean (H, W, C) and the standard deviation over all pixels of the raw images."""
        return self.images.mean(0), float(self.images.std())

    def subset(self, positions: np.ndarray) -> 'ArrayDataset':
        """The samples at ``positions`` (their ``indices`` still point into the dataset they were split from)."""
        return ArrayDataset(self.images[positions], self.labels[positions], self.transform, self.indices[positions])

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = (self.image(index) - self.offset) / self.scale
        if self.transform is not None:
            # torch's RNG (saved in checkpoints, seeded per worker) drives the augmentation
            self.transform.set_random_seed(int(torch.randint(2**31 - 1, ())))
            image = self.transform(image=image)['image']
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)), int(
            self.labels[index]
        )


def clutter_canvas(
    digits: np.ndarray,
    index: int,
    canvas_size: int = 60,
    patch_size: int = 8,
    patches: int = 6,
    seed: int = 0,
) -> np.ndarray:
    """Digit ``index`` of ``digits`` (N, h, w) at a random position on a cluttered canvas.

    Clutter: ``patches`` random ``patch_size`` crops of other random digits, placed at random
    positions first; the digit is then pasted (maximum of the two) on top. Deterministic in
    (``seed``, ``index``).
    """
    rng = np.random.default_rng([seed, index])
    height, width = digits.shape[1:3]
    if canvas_size < max(height, width) or patch_size > min(height, width):
        raise ValueError(
            f'canvas_size ({canvas_size}) must hold a {height}×{width} digit and '
            f'patch_size ({patch_size}) must fit inside one'
        )
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
    for _ in range(patches):
        source = digits[rng.integers(len(digits))]
        top, left = rng.integers(0, height - patch_size + 1), rng.integers(0, width - patch_size + 1)
        patch = source[top : top + patch_size, left : left + patch_size]
        row, col = rng.integers(0, canvas_size - patch_size + 1, size=2)
        region = canvas[row : row + patch_size, col : col + patch_size]
        np.maximum(region, patch, out=region)
    row, col = rng.integers(0, canvas_size - height + 1), rng.integers(0, canvas_size - width + 1)
    region = canvas[row : row + height, col : col + width]
    np.maximum(region, digits[index], out=region)
    return canvas


class ClutteredDataset(ArrayDataset):
    """MNIST-cluttered: :func:`clutter_canvas` of each digit, generated on access."""

    def __init__(
        self,
        digits: np.ndarray,
        labels: np.ndarray,
        transform: Optional[A.Compose] = None,
        canvas_size: int = 60,
        seed: int = 0,
    ) -> None:
        super().__init__(digits[..., None], labels, transform)
        self.digits, self.canvas_size, self.seed = self.images[..., 0], canvas_size, seed

    def image(self, index: int) -> np.ndarray:
        return clutter_canvas(self.digits, index, self.canvas_size, seed=self.seed)[..., None]

    def subset(self, positions: np.ndarray) -> 'ClutteredDataset':
        """The canvases of the digits at ``positions``, their clutter cut from those digits only."""
        subset = ClutteredDataset(
            self.digits[positions], self.labels[positions], self.transform, self.canvas_size, self.seed
        )
        subset.indices = self.indices[positions]
        return subset

    def pixel_statistics(self) -> Tuple[np.ndarray, float]:
        """As :meth:`ArrayDataset.pixel_statistics`, over the generated canvases (one at a time)."""
        total = np.zeros((self.canvas_size, self.canvas_size, 1))
        squares = 0.0
        for index in range(len(self)):
            canvas = self.image(index).astype(np.float64)
            total += canvas
            squares += float((canvas**2).sum())
        mean = total / len(self)
        variance = squares / (len(self) * total.size) - float(mean.mean()) ** 2
        return mean.astype(np.float32), float(np.sqrt(max(variance, 0.0)))


def dataset_not_found(name: str, root: Path, how: str, error: Exception) -> DatasetNotFoundError:
    """The error for a dataset that is neither in ``root`` nor downloadable: names the dataset,
    the folder, the download failure and ``how`` to provide it (shared by every recipe's data)."""
    return DatasetNotFoundError(
        f'dataset {name!r} was not found in {str(root)!r} and could not be downloaded '
        f'({type(error).__name__}: {error}). {how} Then pass --data_dir {root} (and --download false to stay offline).'
    )


@contextlib.contextmanager
def removing_empty_folders_on_failure(root: Path) -> Iterator[None]:
    """Runs a dataset load or download; when it fails, removes the folders it created under ``root``
    (and ``root`` itself) that hold no file, so a failed download leaves no empty dataset folders."""
    existed = {path.name for path in root.iterdir()} if root.is_dir() else None
    try:
        yield
    except BaseException:
        created = [root] if existed is None else [path for path in root.iterdir() if path.name not in existed]
        for folder in created:
            if folder.is_dir():
                for directory, _, _ in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):  # deepest first
                    with contextlib.suppress(OSError):  # not empty: a file was written there
                        os.rmdir(directory)
        raise


def idx_folders(name: str, data_dir: str = DEFAULT_DATA_DIR) -> List[Path]:
    """The folders searched, in order, for the idx files of ``name`` (``mnist`` or ``fashion_mnist``):
    ``data_dir``, torchvision's ``<data_dir>/<FashionMNIST|MNIST>/raw``, ``<data_dir>/<fashion-mnist|mnist>``
    and, when ``data_dir`` is the default ``'data'``, the system folders of :data:`IDX_DATASETS`
    (Debian's ``/usr/share/datasets/fashion-mnist``)."""
    spec = IDX_DATASETS[name]
    root = Path(data_dir)
    folders = [root, root / spec.torchvision_class / 'raw', root / spec.folder]
    if root == Path(DEFAULT_DATA_DIR):
        folders += [Path(folder) for folder in spec.system_dirs]
    return folders


def _idx_file(folder: Path, stem: str) -> Optional[Path]:
    """``folder/stem`` or, when only that is there, ``folder/stem.gz``."""
    for path in (folder / stem, folder / f'{stem}.gz'):
        if path.is_file():
            return path
    return None


def find_idx_files(name: str, data_dir: str = DEFAULT_DATA_DIR) -> Optional[Dict[str, Path]]:
    """The four idx files of ``name`` from the first of :func:`idx_folders` that holds all four (an unpacked
    file before a gzipped one), keyed by their names without ``.gz``; None when no folder holds them."""
    for folder in idx_folders(name, data_dir):
        found = {stem: _idx_file(folder, stem) for stems in IDX_FILES.values() for stem in stems}
        if all(found.values()):
            return found
    return None


def read_idx_file(path: Path, kind: str) -> np.ndarray:
    """The array in an idx file (``kind``: ``'images'``, uint8 (N, H, W), or ``'labels'``, uint8 (N,)), gzipped
    (``.gz``) or not, read with torchvision's reader.

    No checksum: the header (magic number, dimensions) and the file's length must agree, so a
    re-compressed copy loads and a truncated or foreign file is a :class:`DatasetFileError` naming it.
    """
    from torchvision.datasets.mnist import read_image_file, read_label_file

    path = Path(path)
    with tempfile.TemporaryDirectory() as scratch:
        unpacked = path
        if path.suffix == '.gz':  # torchvision's reader takes an unpacked path
            unpacked = Path(scratch) / path.stem
            try:
                with gzip.open(path, 'rb') as source, open(unpacked, 'wb') as target:
                    shutil.copyfileobj(source, target, 1 << 20)
            except (OSError, EOFError, zlib.error) as error:
                raise DatasetFileError(
                    f'{str(path)!r} is not a readable gzip file ({type(error).__name__}: {error})'
                ) from error
        size = unpacked.stat().st_size
        with open(unpacked, 'rb') as file:
            header = file.read(16)
        magic = int.from_bytes(header[:4], 'big') if len(header) >= 4 else None
        if magic != _IDX_MAGIC[kind]:
            found = 'nothing' if magic is None else f'0x{magic:08x}'
            raise DatasetFileError(
                f'{str(path)!r} is not an idx file of {kind}: its header starts with {found}, '
                f'expected 0x{_IDX_MAGIC[kind]:08x}'
            )
        dims = 3 if kind == 'images' else 1
        shape = [int.from_bytes(header[4 + 4 * axis : 8 + 4 * axis], 'big') for axis in range(dims)]
        expected = 4 * (dims + 1) + math.prod(shape)
        if len(header) < 4 * (dims + 1) or size != expected:
            raise DatasetFileError(
                f'{str(path)!r} holds {size} bytes{" unpacked" if unpacked != path else ""}, but its header '
                f'announces {"x".join(map(str, shape))} {kind} ({expected} bytes): the file is truncated or damaged'
            )
        reader = read_image_file if kind == 'images' else read_label_file
        return reader(str(unpacked)).numpy().copy()


def _idx_arrays(name: str, files: Dict[str, Path], train: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 1) float32 in [0, 1] and int64 labels of one split, checked against each other."""
    image_stem, label_stem = IDX_FILES[train]
    images = read_idx_file(files[image_stem], 'images')
    labels = read_idx_file(files[label_stem], 'labels').astype(np.int64)
    if len(images) != len(labels):
        raise DatasetFileError(
            f'{str(files[image_stem])!r} holds {len(images)} images but {str(files[label_stem])!r} '
            f'{len(labels)} labels: they are not one split'
        )
    if images.shape[1:] != (28, 28):
        raise DatasetFileError(
            f'{str(files[image_stem])!r} holds images of {images.shape[1]}x{images.shape[2]} pixels; {name} has 28x28'
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9:
        raise DatasetFileError(
            f'{str(files[label_stem])!r} holds labels from {int(labels.min())} to {int(labels.max())}; '
            f'{name} has the classes 0 to 9'
        )
    return images[..., None].astype(np.float32) / 255.0, labels


def _idx_not_found(name: str, data_dir: str, error: Optional[Exception]) -> DatasetNotFoundError:
    """The error for idx files found nowhere: the folders searched, both ways to get them."""
    spec = IDX_DATASETS[name]
    searched = ', '.join(repr(str(folder)) for folder in idx_folders(name, data_dir))
    stems = ', '.join(stem for stems in IDX_FILES.values() for stem in stems)
    failed = f' The download failed ({type(error).__name__}: {error}).' if error is not None else ''
    ways = f'torchvision.datasets.{spec.torchvision_class}({data_dir!r}, download=True) where there is internet'
    if spec.apt_package is not None:
        ways = (
            f'apt-get install {spec.apt_package} (Debian or Ubuntu: the files land in {spec.system_dirs[0]}), or {ways}'
        )
    return DatasetNotFoundError(
        f'dataset {name!r} was not found in {searched}: none holds its four idx files ({stems}; '
        f'gzipped or not).{failed} Get them with {ways}; then pass --data_dir with their folder '
        '(and --download false to stay offline).'
    )


def _idx_dataset_arrays(name: str, data_dir: str, download: bool) -> Tuple[Tuple[np.ndarray, np.ndarray], ...]:
    """``((train images, labels), (test images, labels))`` of ``mnist`` / ``fashion_mnist`` from the idx files
    :func:`find_idx_files` finds, downloaded by torchvision into ``data_dir`` first when none are found."""
    files = find_idx_files(name, data_dir)
    if files is None:
        error = None
        if download:
            import torchvision.datasets as tv_datasets

            dataset_cls = getattr(tv_datasets, IDX_DATASETS[name].torchvision_class)
            root = Path(data_dir)
            try:
                with removing_empty_folders_on_failure(root):
                    dataset_cls(str(root), train=True, download=True)  # all four files, unpacked into <class>/raw
            except Exception as failure:  # URLError / OSError offline, RuntimeError for a bad download
                error = failure
            files = find_idx_files(name, data_dir)
        if files is None:
            raise _idx_not_found(name, data_dir, error)
    return _idx_arrays(name, files, True), _idx_arrays(name, files, False)


def stratified_subset(labels: np.ndarray, size: int, seed: int, name: str = 'the training split') -> np.ndarray:
    """Sorted positions of a stratified subset of ``size`` of ``labels`` (each class keeps its share), drawn
    with ``seed``; all positions when ``size`` is their number. ``size`` outside [classes, len] is a
    ValueError naming ``train_subset``."""
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(labels))
    if not classes <= size <= len(labels):
        raise ValueError(
            f'train_subset must be between {classes} (one image per class) and {len(labels)} (all of {name}), '
            f'got {size}'
        )
    positions = np.arange(len(labels))
    if size == len(labels):
        return positions
    chosen, _ = train_test_split(positions, train_size=size, stratify=labels, random_state=seed)
    return np.sort(chosen)


def _torchvision_arrays(name: str, root: Path, download: bool, train: bool) -> Tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tv_datasets

    dataset_cls = dict(cifar10=tv_datasets.CIFAR10)[name]
    try:
        with removing_empty_folders_on_failure(root):
            dataset = dataset_cls(str(root), train=train, download=download)
    except Exception as error:  # torchvision raises RuntimeError when missing, URLError/OSError offline
        how = (
            f'Download it where there is internet with torchvision.datasets.{dataset_cls.__name__}'
            f'({str(root)!r}, download=True) and copy {str(root)!r} here.'
        )
        raise dataset_not_found(name, root, how, error) from error
    images = np.asarray(dataset.data)
    labels = np.asarray(dataset.targets)
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(np.float32) / 255.0, labels


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    return train_test_split(indices, test_size=val_fraction, stratify=labels, random_state=seed)


def _synthetic(samples: int, num_classes: int, img_size: int, seed: int, split: int) -> Tuple[np.ndarray, np.ndarray]:
    """Class templates drawn from ``seed`` (shared by the splits) plus noise drawn per ``split``."""
    templates = np.random.default_rng(seed).random((num_classes, img_size, img_size, 1), dtype=np.float32)
    noise = np.random.default_rng([seed, split]).standard_normal((samples, img_size, img_size, 1))
    labels = np.arange(samples) % num_classes
    return np.clip(templates[labels] + 0.3 * noise.astype(np.float32), 0.0, 1.0), labels


def _normalize(train: ArrayDataset, val: ArrayDataset, input_norm: str) -> None:
    """Sets both sets' ``offset`` / ``scale`` from the training images only (see the module docstring)."""
    if input_norm == 'none':
        return
    pixel_mean, pixel_std = train.pixel_statistics()
    if input_norm == 'pixel_mean':
        offset, scale = pixel_mean, 1.0
    elif input_norm == 'standardize':
        offset, scale = np.float32(127 / 255), max(pixel_std, 1e-7)
    else:
        raise ValueError(f'input_norm must be one of {INPUT_NORMS}, got {input_norm!r}')
    for dataset in (train, val):
        dataset.offset, dataset.scale = offset, scale


def _split(images: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int, train_transform, val_transform):
    train_index, val_index = _stratified_split(labels, val_fraction, seed)
    return (
        ArrayDataset(images[train_index], labels[train_index], train_transform, indices=train_index),
        ArrayDataset(images[val_index], labels[val_index], val_transform, indices=val_index),
    )


def build_classification_data(
    name: str,
    data_dir: str = 'data',
    download: bool = True,
    img_size: Optional[int] = None,
    augment: bool = False,
    split_seed: int = 0,
    synthetic_samples: int = 240,
    input_norm: str = 'none',
    augment_shift: float = 0.2,
    train_subset: Optional[int] = None,
) -> Tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """``(train, validation, info)`` for one of :data:`CLASSIFICATION_DATASETS`.

    Args:
        name: dataset name.
        data_dir: where downloaded datasets live (``<data_dir>/lfw_home`` for LFW's scikit-learn cache; the
            idx files of ``mnist`` / ``fashion_mnist`` are also read from the folders of :func:`idx_folders`).
        download: try to download a missing dataset.
        img_size: resize images to ``img_size`` × ``img_size`` (None keeps the native size).
        augment: the authors' shift + flip augmentation on the training set.
        split_seed: seed of the train/validation split of :data:`RESPLIT_DATASETS` (and of the
            ``synthetic`` data) and of the ``train_subset``; official splits ignore it otherwise.
        synthetic_samples: size of the ``synthetic`` set (train and validation each).
        input_norm: one of :data:`INPUT_NORMS`, statistics of the training split only.
        augment_shift: the largest shift of the augmentation, a fraction of the width / height.
        train_subset: train on a stratified subset of this many training images (:func:`stratified_subset`
            with ``split_seed``; ``input_norm`` then takes its statistics from them); None: all. The
            validation set stays whole.
    """
    if input_norm not in INPUT_NORMS:
        raise ValueError(f'input_norm must be one of {INPUT_NORMS}, got {input_norm!r}')
    if not 0.0 <= augment_shift < 1.0:
        raise ValueError(f'augment_shift must be in [0, 1), got {augment_shift!r}')
    root = Path(data_dir)
    train_transform = build_transform(img_size, augment, augment_shift)
    val_transform = build_transform(img_size, False)
    if name == 'digits':
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, labels = bunch.images[..., None].astype(np.float32) / 16.0, bunch.target
        train, val = _split(images, labels, 0.2, split_seed, train_transform, val_transform)
        num_classes = 10
    elif name == 'synthetic':
        train = ArrayDataset(*_synthetic(synthetic_samples, 4, 8, split_seed, split=0), train_transform)
        val = ArrayDataset(*_synthetic(synthetic_samples, 4, 8, split_seed, split=1), val_transform)
        num_classes = 4
    elif name in IDX_DATASETS:
        train_arrays, val_arrays = _idx_dataset_arrays(name, data_dir, download)
        train = ArrayDataset(*train_arrays, train_transform)
        val = ArrayDataset(*val_arrays, val_transform)
        num_classes = 10
    elif name == 'cifar10':
        train = ArrayDataset(*_torchvision_arrays(name, root, download, True), train_transform)
        val = ArrayDataset(*_torchvision_arrays(name, root, download, False), val_transform)
        num_classes = 10
    elif name == 'mnist_cluttered':
        (train_images, train_labels), (val_images, val_labels) = _idx_dataset_arrays('mnist', data_dir, download)
        train = ClutteredDataset(train_images[..., 0], train_labels, train_transform, seed=0)
        val = ClutteredDataset(val_images[..., 0], val_labels, val_transform, seed=1)
        num_classes = 10
    elif name == 'lfw':
        from sklearn.datasets import fetch_lfw_people

        try:
            with removing_empty_folders_on_failure(root):
                bunch = fetch_lfw_people(min_faces_per_person=20, data_home=str(root), download_if_missing=download)
        except Exception as error:  # OSError when missing offline, URLError when the download fails
            how = (
                'Download it where there is internet with sklearn.datasets.fetch_lfw_people('
                f'min_faces_per_person=20, data_home={str(root)!r}) and copy {str(root)!r} here.'
            )
            raise dataset_not_found(name, root, how, error) from error
        # scikit-learn divides the JPEG pixels by 255 already (its docs still say 0-255)
        images, labels = bunch.images[..., None].astype(np.float32), bunch.target
        train, val = _split(images, labels, 756 / 3023, split_seed, train_transform, val_transform)
        num_classes = len(bunch.target_names)
    else:
        raise ValueError(f'dataset must be one of {CLASSIFICATION_DATASETS}, got {name!r}')
    if train_subset is not None:
        train = train.subset(stratified_subset(train.labels, train_subset, split_seed, f'the training split of {name}'))
    _normalize(train, val, input_norm)
    channels, height, width = train[0][0].shape
    return train, val, DataInfo(name, num_classes, channels, (height, width))
