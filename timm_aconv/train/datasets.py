""" Image-classification datasets of the paper, plus offline ones

``build_classification_data(name, ...)`` returns train and validation datasets yielding
``(float tensor (C, H, W) in [0, 1], int label)`` and a :class:`DataInfo`:

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes; works
  offline, the default), split 80/20 stratified with ``split_seed``.
- ``synthetic``: seeded class templates plus noise (for tests; no files at all).
- ``mnist``, ``fashion_mnist``, ``cifar10``: torchvision, validation = the test split (as in the
  paper's code).
- ``mnist_cluttered``: generated from MNIST, the digit placed at a random position on a 60×60
  canvas with 8×8 clutter patches cut from other digits (Jaderberg et al. 2015), deterministic
  per sample index.
- ``lfw``: scikit-learn ``fetch_lfw_people(min_faces_per_person=20)``, 62 people, 3023 images,
  split 2267 / 756 stratified.

A dataset that is neither on disk nor downloadable raises :class:`DatasetNotFoundError` naming
the dataset, the directory searched and how to provide it. Augmentation (``augment=True``) is the
paper's Keras ``ImageDataGenerator(width/height_shift_range=0.2, horizontal_flip=True)`` done
with Albumentations; its random draws come from torch's RNG, so runs and resumed runs repeat.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ['CLASSIFICATION_DATASETS', 'DataInfo', 'DatasetNotFoundError', 'dataset_not_found', 'ArrayDataset', 'ClutteredDataset',
           'build_classification_data', 'clutter_canvas']

CLASSIFICATION_DATASETS = ('digits', 'synthetic', 'mnist', 'fashion_mnist', 'cifar10', 'mnist_cluttered', 'lfw')


class DatasetNotFoundError(FileNotFoundError):
    """ A dataset missing from disk that could not be downloaded. """


@dataclass(frozen=True)
class DataInfo:
    """ What a model needs to know about a dataset. """
    name: str
    num_classes: int
    in_chans: int
    img_size: Tuple[int, int]  # (height, width)


def build_transform(img_size: Optional[int], augment: bool) -> Optional[A.Compose]:
    """ Resize to ``img_size`` (when given) and the paper's shift + flip augmentation. """
    steps = []
    if img_size is not None:
        steps.append(A.Resize(img_size, img_size))
    if augment:
        steps += [A.Affine(translate_percent={'x': (-0.2, 0.2), 'y': (-0.2, 0.2)}, p=1.0),
                  A.HorizontalFlip(p=0.5)]
    return A.Compose(steps, seed=0) if steps else None


class ArrayDataset(Dataset):
    """ Images (N, H, W, C) float32 in [0, 1] and labels (N,) with an optional Albumentations transform. """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[A.Compose] = None) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f'images must be (N, H, W, C) with one label each, got {images.shape} and {len(labels)}')
        self.images = images.astype(np.float32, copy=False)
        self.labels = labels.astype(np.int64, copy=False)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        return self.images[index]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.image(index)
        if self.transform is not None:
            # torch's RNG (saved in checkpoints, seeded per worker) drives the augmentation
            self.transform.set_random_seed(int(torch.randint(2 ** 31 - 1, ())))
            image = self.transform(image=image)['image']
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(self.labels[index])


def clutter_canvas(
        digits: np.ndarray,
        index: int,
        canvas_size: int = 60,
        patch_size: int = 8,
        patches: int = 6,
        seed: int = 0,
) -> np.ndarray:
    """ Digit ``index`` of ``digits`` (N, h, w) at a random position on a cluttered canvas.

    Clutter: ``patches`` random ``patch_size`` crops of other random digits, placed at random
    positions first; the digit is then pasted (maximum of the two) on top. Deterministic in
    (``seed``, ``index``).
    """
    rng = np.random.default_rng([seed, index])
    height, width = digits.shape[1:3]
    if canvas_size < max(height, width) or patch_size > min(height, width):
        raise ValueError(f'canvas_size ({canvas_size}) must hold a {height}×{width} digit and '
                         f'patch_size ({patch_size}) must fit inside one')
    canvas = np.zeros((canvas_size, canvas_size), dtype=np.float32)
    for _ in range(patches):
        source = digits[rng.integers(len(digits))]
        top, left = rng.integers(0, height - patch_size + 1), rng.integers(0, width - patch_size + 1)
        patch = source[top:top + patch_size, left:left + patch_size]
        row, col = rng.integers(0, canvas_size - patch_size + 1, size=2)
        region = canvas[row:row + patch_size, col:col + patch_size]
        np.maximum(region, patch, out=region)
    row, col = rng.integers(0, canvas_size - height + 1), rng.integers(0, canvas_size - width + 1)
    region = canvas[row:row + height, col:col + width]
    np.maximum(region, digits[index], out=region)
    return canvas


class ClutteredDataset(ArrayDataset):
    """ MNIST-cluttered: :func:`clutter_canvas` of each digit, generated on access. """

    def __init__(self, digits: np.ndarray, labels: np.ndarray, transform: Optional[A.Compose] = None,
                 canvas_size: int = 60, seed: int = 0) -> None:
        super().__init__(digits[..., None], labels, transform)
        self.digits, self.canvas_size, self.seed = self.images[..., 0], canvas_size, seed

    def image(self, index: int) -> np.ndarray:
        return clutter_canvas(self.digits, index, self.canvas_size, seed=self.seed)[..., None]


def dataset_not_found(name: str, root: Path, how: str, error: Exception) -> DatasetNotFoundError:
    """ The error for a dataset that is neither in ``root`` nor downloadable: names the dataset,
    the folder, the download failure and ``how`` to provide it (shared by every recipe's data). """
    return DatasetNotFoundError(
        f'dataset {name!r} was not found in {str(root)!r} and could not be downloaded '
        f'({type(error).__name__}: {error}). {how} Then pass --data_dir {root} (and --download false to stay offline).')


def _torchvision_arrays(name: str, root: Path, download: bool, train: bool) -> Tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tv_datasets
    dataset_cls = dict(mnist=tv_datasets.MNIST, fashion_mnist=tv_datasets.FashionMNIST,
                       cifar10=tv_datasets.CIFAR10)[name]
    try:
        dataset = dataset_cls(str(root), train=train, download=download)
    except Exception as error:  # torchvision raises RuntimeError when missing, URLError/OSError offline
        how = (f'Download it where there is internet with torchvision.datasets.{dataset_cls.__name__}'
               f'({str(root)!r}, download=True) and copy {str(root)!r} here.')
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
    """ Class templates drawn from ``seed`` (shared by the splits) plus noise drawn per ``split``. """
    templates = np.random.default_rng(seed).random((num_classes, img_size, img_size, 1), dtype=np.float32)
    noise = np.random.default_rng([seed, split]).standard_normal((samples, img_size, img_size, 1))
    labels = np.arange(samples) % num_classes
    return np.clip(templates[labels] + 0.3 * noise.astype(np.float32), 0.0, 1.0), labels


def build_classification_data(
        name: str,
        data_dir: str = 'data',
        download: bool = True,
        img_size: Optional[int] = None,
        augment: bool = False,
        split_seed: int = 0,
        synthetic_samples: int = 240,
) -> Tuple[Dataset, Dataset, DataInfo]:
    """ ``(train, validation, info)`` for one of :data:`CLASSIFICATION_DATASETS`.

    Args:
        name: dataset name.
        data_dir: where downloaded datasets live (``<data_dir>/<name>`` for LFW's scikit-learn cache).
        download: try to download a missing dataset.
        img_size: resize images to ``img_size`` × ``img_size`` (None keeps the native size).
        augment: the paper's shift + flip augmentation on the training set.
        split_seed: seed of the train/validation split (digits, LFW) and of generated data.
        synthetic_samples: size of the ``synthetic`` set (train and validation each).
    """
    root = Path(data_dir)
    train_transform = build_transform(img_size, augment)
    val_transform = build_transform(img_size, False)
    if name == 'digits':
        from sklearn.datasets import load_digits
        bunch = load_digits()
        images, labels = bunch.images[..., None].astype(np.float32) / 16.0, bunch.target
        train_index, val_index = _stratified_split(labels, 0.2, split_seed)
        train = ArrayDataset(images[train_index], labels[train_index], train_transform)
        val = ArrayDataset(images[val_index], labels[val_index], val_transform)
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
        train = ClutteredDataset(train_images[..., 0], train_labels, train_transform, seed=split_seed)
        val = ClutteredDataset(val_images[..., 0], val_labels, val_transform, seed=split_seed + 1)
        num_classes = 10
    elif name == 'lfw':
        from sklearn.datasets import fetch_lfw_people
        try:
            bunch = fetch_lfw_people(min_faces_per_person=20, data_home=str(root), download_if_missing=download)
        except Exception as error:  # OSError when missing offline, URLError when the download fails
            how = ('Download it where there is internet with sklearn.datasets.fetch_lfw_people('
                   f'min_faces_per_person=20, data_home={str(root)!r}) and copy {str(root)!r} here.')
            raise dataset_not_found(name, root, how, error) from error
        images, labels = bunch.images[..., None].astype(np.float32) / 255.0, bunch.target
        train_index, val_index = _stratified_split(labels, 756 / 3023, split_seed)
        train = ArrayDataset(images[train_index], labels[train_index], train_transform)
        val = ArrayDataset(images[val_index], labels[val_index], val_transform)
        num_classes = len(bunch.target_names)
    else:
        raise ValueError(f'dataset must be one of {CLASSIFICATION_DATASETS}, got {name!r}')
    channels, height, width = train[0][0].shape
    return train, val, DataInfo(name, num_classes, channels, (height, width))
