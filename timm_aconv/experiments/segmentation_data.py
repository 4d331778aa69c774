"""Trimap segmentation data of the paper's U-Net experiment (section 4.4)

- ``oxford_pets``: torchvision's ``OxfordIIITPet`` (trainval 3680 / test 3669 images), trimap
  labels 1/2/3 → 0/1/2 (pet, background, border); validation = the test split.
- ``shapes``: generated offline by :func:`shapes_sample` (an ellipse "pet" with a border band on
  a gradient background with a distractor rectangle; for smoke runs and tests).

Image and mask go through one Albumentations transform (:func:`build_segmentation_transform`):
resize (masks nearest), the authors' flip + brightness augmentation, and scaling to [-2, 2] as in
the authors' code.

Validation (``val_protocol``): ``'full'`` scores the whole test split with nearest-resized masks
(the default); ``'authors'`` reproduces how the paper's 86.21% / 85.54% were measured: the
authors' script validated on ``VALIDATION_STEPS = 3669 // 32 // 5 = 22`` batches of 32, i.e. the
first :data:`AUTHORS_VAL_IMAGES` = 704 test images, with masks resized *bilinearly*; pixels whose
interpolated label is fractional (along class borders) can never equal a prediction and count
as errors, as in Keras' sparse accuracy (:class:`~timm_aconv.engine.metrics.SegmentationMetric`
takes such float masks).
"""

from pathlib import Path
from typing import TYPE_CHECKING, Tuple

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..engine.config import ConfigError
from .datasets import dataset_not_found, removing_empty_folders_on_failure

if TYPE_CHECKING:
    from .segmentation import SegmentationConfig

__all__ = [
    'AUTHORS_VAL_IMAGES',
    'IMAGE_MEAN',
    'IMAGE_STD',
    'SEGMENTATION_DATASETS',
    'TRIMAP_CLASSES',
    'SegmentationDataset',
    'authors_validation_set',
    'build_segmentation_data',
    'build_segmentation_transform',
    'shapes_sample',
]

SEGMENTATION_DATASETS = ('shapes', 'oxford_pets')
AUTHORS_VAL_IMAGES = 22 * 32  # the authors' VALIDATION_STEPS (3669 // 32 // 5) batches of 32
TRIMAP_CLASSES = ('pet', 'background', 'border')  # the trimap's 1, 2, 3 minus one
# the authors' scaling: pixel / 255 * 4 - 2, i.e. (pixel / 255 - 0.5) / 0.25
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def shapes_sample(index: int, size: int = 128, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """One offline trimap sample: (image (size, size, 3) uint8, labels (size, size) uint8 in 0..2).

    An ellipse "pet" (class 0, striped texture) with a border band (class 2, like the trimaps'
    uncertain region) on a colour-gradient background (class 1) that holds a distractor
    rectangle; noise on top. Deterministic in (``seed``, ``index``).
    """
    rng = np.random.default_rng([seed, index])
    rows, cols = (np.mgrid[0:size, 0:size] + 0.5) / size
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * cols + np.sin(angle) * rows
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + 1e-8)
    start, end = rng.uniform(0, 255, size=(2, 3))
    image = start + (end - start) * ramp[..., None]
    top, left = rng.uniform(0.0, 0.7, size=2)
    height, width = rng.uniform(0.15, 0.3, size=2)
    image[(rows > top) & (rows < top + height) & (cols > left) & (cols < left + width)] = rng.uniform(0, 255, 3)
    centre = rng.uniform(0.3, 0.7, size=2)
    axes = rng.uniform(0.12, 0.3, size=2)
    tilt = rng.uniform(0, np.pi)
    along = (cols - centre[1]) * np.cos(tilt) + (rows - centre[0]) * np.sin(tilt)
    across = -(cols - centre[1]) * np.sin(tilt) + (rows - centre[0]) * np.cos(tilt)
    radius = np.sqrt((along / axes[0]) ** 2 + (across / axes[1]) ** 2)  # 1 on the ellipse
    distance = (radius - 1.0) * axes.min() * size  # ≈ signed distance to the outline in pixels
    pet = radius < 1.0
    stripes = 0.5 + 0.5 * np.sin(along * size / rng.uniform(2, 5))
    colour = rng.uniform(0, 255, 3)
    image[pet] = (colour * (0.6 + 0.4 * stripes[..., None]))[pet]
    image += rng.normal(0, 12, image.shape)
    labels = np.ones((size, size), dtype=np.uint8)
    labels[pet] = 0
    labels[np.abs(distance) < max(1.0, size / 64)] = 2
    return np.clip(image, 0, 255).astype(np.uint8), labels


class _ShapesSource:
    def __init__(self, length: int, size: int, seed: int) -> None:
        self.length, self.size, self.seed = length, size, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return shapes_sample(index, self.size, self.seed)


class _PetTrimapSource:
    """torchvision's OxfordIIITPet as (RGB uint8, trimap labels 0..2) numpy pairs."""

    def __init__(self, pets) -> None:
        self.pets = pets

    def __len__(self) -> int:
        return len(self.pets)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        image, trimap = self.pets[index]
        return np.asarray(image.convert('RGB')), np.asarray(trimap, dtype=np.uint8) - 1


class _FirstItems:
    """The first ``length`` items of a source."""

    def __init__(self, source, length: int) -> None:
        self.source, self.length = source, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.length:
            raise IndexError(f'index {index} out of range for {self.length} items')
        return self.source[index]


class SegmentationDataset(Dataset):
    """(image, labels) numpy pairs → (float (3, H, W) in [-2, 2], labels (H, W)) with a joint transform.

    Labels are long, or float32 with ``float_masks=True`` (masks resized bilinearly keep their
    fractional values).
    """

    def __init__(self, source, transform: A.Compose, float_masks: bool = False) -> None:
        self.source, self.transform, self.float_masks = source, transform, float_masks

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        image, labels = self.source[index]
        if self.float_masks:
            labels = labels.astype(np.float32)
        # torch's RNG (seeded per run and per worker, saved in checkpoints) drives the augmentation
        self.transform.set_random_seed(int(torch.randint(2**31 - 1, ())))
        result = self.transform(image=image, mask=labels)
        image = torch.from_numpy(np.ascontiguousarray(result['image'].transpose(2, 0, 1)))
        return image, torch.from_numpy(result['mask'].astype(np.float32 if self.float_masks else np.int64))


def build_segmentation_transform(img_size: int, augment: bool, bilinear_masks: bool = False) -> A.Compose:
    """Resize (masks nearest, or bilinear with ``bilinear_masks``), the authors' augmentation,
    scaling to [-2, 2].

    The authors' augmentation (one coin for both): with probability 0.5 flip left-right and
    shift the brightness by up to ±0.2 of the range.
    """
    mask_interpolation = cv2.INTER_LINEAR if bilinear_masks else cv2.INTER_NEAREST
    steps = [A.Resize(img_size, img_size, mask_interpolation=mask_interpolation)]
    if augment:
        steps.append(
            A.Sequential(
                [A.HorizontalFlip(p=1.0), A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.0, p=1.0)],
                p=0.5,
            )
        )
    steps.append(A.Normalize(mean=IMAGE_MEAN, std=IMAGE_STD, max_pixel_value=255.0))
    return A.Compose(steps, seed=0)


def authors_validation_set(source, img_size: int) -> SegmentationDataset:
    """The authors' validation: the first 704 images of ``source`` with bilinearly resized masks."""
    if len(source) < AUTHORS_VAL_IMAGES:
        raise ConfigError(
            f"val_protocol='authors' scores the first {AUTHORS_VAL_IMAGES} test images, but the "
            f'validation split has only {len(source)}'
        )
    return SegmentationDataset(
        _FirstItems(source, AUTHORS_VAL_IMAGES),
        build_segmentation_transform(img_size, False, bilinear_masks=True),
        float_masks=True,
    )


def _oxford_pets(root: Path, split: str, download: bool) -> _PetTrimapSource:
    from torchvision.datasets import OxfordIIITPet

    try:
        with removing_empty_folders_on_failure(root):
            pets = OxfordIIITPet(str(root), split=split, target_types='segmentation', download=download)
    except Exception as error:  # RuntimeError when missing, URLError / OSError when the download fails
        how = (
            'Download images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ '
            f'and extract both into {str(root / "oxford-iiit-pet")!r} (it must hold images/ and '
            'annotations/trimaps/), or run torchvision.datasets.OxfordIIITPet(root, download=True) where there '
            'is internet and copy the folder.'
        )
        raise dataset_not_found('oxford_pets', root, how, error) from error
    return _PetTrimapSource(pets)


def build_segmentation_data(config: 'SegmentationConfig') -> Tuple[SegmentationDataset, SegmentationDataset]:
    """Training and validation sets of ``config.dataset`` (validation: the paper's test split,
    whole or as ``config.val_protocol`` says)."""
    train_transform = build_segmentation_transform(config.img_size, config.augment)
    val_transform = build_segmentation_transform(config.img_size, False)
    if config.dataset == 'shapes':
        train = _ShapesSource(config.shapes_train_size, config.img_size, seed=config.seed)
        val = _ShapesSource(config.shapes_val_size, config.img_size, seed=config.seed + 10_000)
    elif config.dataset == 'oxford_pets':
        root = Path(config.data_dir)
        train, val = _oxford_pets(root, 'trainval', config.download), _oxford_pets(root, 'test', config.download)
    else:
        raise ConfigError(f'dataset must be one of {SEGMENTATION_DATASETS}, got {config.dataset!r}')
    if config.val_protocol == 'authors':
        return SegmentationDataset(train, train_transform), authors_validation_set(val, config.img_size)
    return SegmentationDataset(train, train_transform), SegmentationDataset(val, val_transform)
