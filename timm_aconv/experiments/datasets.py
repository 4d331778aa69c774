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
- ``mnist``, ``fashion_mnist``, ``cifar10``: torchvision, validation = the official test split
  (as in the paper's code).
- ``mnist_cluttered``: generated from MNIST (official split), the digit placed at a random
  position on a 60×60 canvas with 8×8 clutter patches cut from other digits (Jaderberg et al.
  2015), deterministic per sample index (fixed seeds: the same set for every run).
- ``lfw``: scikit-learn ``fetch_lfw_people(min_faces_per_person=20)`` in
  ``<data_dir>/lfw_home``, 62 people, 3023 images of 62×47 pixels (scikit-learn already scales
  them to [0, 1]), split 2267 / 756 stratified with ``split_seed``.

``digits``, ``synthetic`` and ``lfw`` have no official split (:data:`RESPLIT_DATASETS`):
``split_seed`` draws it, so a new seed is a new split. A dataset that is neither on disk nor
downloadable raises :class:`DatasetNotFoundError` naming the dataset, the directory searched and
how to provide it. Augmentation (``augment=True``) is the authors' Keras
``ImageDataGenerator(width_shift_range=shift, height_shift_range=shift, horizontal_flip=True,
fill_mode='nearest')`` done with Albumentations: uniform shifts of up to ``augment_shift`` of the
width and height, borders filled by replicating the edge pixels, a horizontal flip with
probability 0.5; its random draws come from torch's RNG, so runs and resumed runs repeat.
"""

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    'CLASSIFICATION_DATASETS',
    'INPUT_NORMS',
    'RESPLIT_DATASETS',
    'ArrayDataset',
    'ClutteredDataset',
    'DataInfo',
    'DatasetNotFoundError',
    'build_classification_data',
    'build_transform',
    'clutter_canvas',
    'dataset_not_found',
    'removing_empty_folders_on_failure',
]

CLASSIFICATION_DATASETS = ('digits', 'synthetic', 'mnist', 'fashion_mnist', 'cifar10', 'mnist_cluttered', 'lfw')
RESPLIT_DATASETS = ('digits', 'synthetic', 'lfw')  # no official split: ``split_seed`` draws one
INPUT_NORMS = ('none', 'pixel_mean', 'standardize')


class DatasetNotFoundError(FileNotFoundError):
    """A dataset missing from disk that could not be downloaded."""


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


def _torchvision_arrays(name: str, root: Path, download: bool, train: bool) -> Tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tv_datasets

    dataset_cls = dict(mnist=tv_datasets.MNIST, fashion_mnist=tv_datasets.FashionMNIST, cifar10=tv_datasets.CIFAR10)[
        name
    ]
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
) -> Tuple[ArrayDataset, ArrayDataset, DataInfo]:
    """``(train, validation, info)`` for one of :data:`CLASSIFICATION_DATASETS`.

    Args:
        name: dataset name.
        data_dir: where downloaded datasets live (``<data_dir>/lfw_home`` for LFW's scikit-learn cache).
        download: try to download a missing dataset.
        img_size: resize images to ``img_size`` × ``img_size`` (None keeps the native size).
        augment: the authors' shift + flip augmentation on the training set.
        split_seed: seed of the train/validation split of :data:`RESPLIT_DATASETS` (and of the
            ``synthetic`` data); official splits ignore it.
        synthetic_samples: size of the ``synthetic`` set (train and validation each).
        input_norm: one of :data:`INPUT_NORMS`, statistics of the training split only.
        augment_shift: the largest shift of the augmentation, a fraction of the width / height.
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
    elif name in ('mnist', 'fashion_mnist', 'cifar10'):
        train = ArrayDataset(*_torchvision_arrays(name, root, download, True), train_transform)
        val = ArrayDataset(*_torchvision_arrays(name, root, download, False), val_transform)
        num_classes = 10
    elif name == 'mnist_cluttered':
        train_images, train_labels = _torchvision_arrays('mnist', root, download, True)
        val_images, val_labels = _torchvision_arrays('mnist', root, download, False)
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
    _normalize(train, val, input_norm)
    channels, height, width = train[0][0].shape
    return train, val, DataInfo(name, num_classes, channels, (height, width))
