"""2-D elliptic envelopes: Algorithm 1 with 'spherical', 'diag' and 'full' envelopes on oriented bars

Not a paper experiment: the paper keeps to circular envelopes (section 3.2). The same adaptive CNN
(:class:`~timm_aconv.AdaptiveConv2d` layers, one kernel size) with each ``covariance_type``, ``repeats``
seeds per type, peak validation accuracy per run, and each elliptic type's t-test against the spherical
one (Student, two-tailed, Holm over the two tests, Cohen's d).

The task (:func:`oriented_bars`): each image holds a few thin bars of random length and position, all at
one of four orientations (0°, 45°, 90°, 135°, the class) with a small jitter, in Gaussian noise: oriented,
elongated structure, the case an ellipse fits and a circle does not.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from ..engine.config import ConfigError
from ..engine.trainer import set_seed
from ..layers.adaptive_conv import AdaptiveConv2d
from ..layers.covariance import COVARIANCE_TYPES
from .compare import _test_row
from .generated_runs import GeneratedTaskConfig, peak_val_accuracy
from .statistics import holm_adjust

__all__ = ['OrientedCompareConfig', 'OrientedComparison', 'oriented_bars', 'oriented_cnn', 'run_oriented_comparison']

ORIENTATIONS = (0.0, 45.0, 90.0, 135.0)


@dataclass
class OrientedCompareConfig(GeneratedTaskConfig):
    """Algorithm 1 on :func:`oriented_bars` for each covariance type; the engine's settings apply to every run."""

    output_dir: str = 'runs/oriented'
    epochs: int = 6
    kernel_size: int = 7
    covariance_types: List[str] = field(default_factory=lambda: list(COVARIANCE_TYPES))
    repeats: int = 3
    image_size: int = 24
    bars: int = 3
    noise: float = 0.6
    train_samples: int = 1200
    val_samples: int = 400
    width: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ConfigError(f'kernel_size must be odd and >= 3, got {self.kernel_size}')
        if not self.covariance_types or 'spherical' not in self.covariance_types:
            raise ConfigError(f"covariance_types must include 'spherical' (the reference), got {self.covariance_types}")
        unknown = [kind for kind in self.covariance_types if kind not in COVARIANCE_TYPES]
        if unknown:
            raise ConfigError(f'covariance_types must be among {COVARIANCE_TYPES}, got {unknown}')
        for name in ('repeats', 'image_size', 'bars', 'train_samples', 'val_samples', 'width', 'batch_size'):
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')


def oriented_bars(
    samples: int, image_size: int = 24, bars: int = 3, noise: float = 0.6, seed: int = 0
) -> TensorDataset:
    """``samples`` images of shape (1, image_size, image_size) and their classes (indices into the
    orientations 0°, 45°, 90°, 135°): ``bars`` bars per image, 1 px thick (a Gaussian profile), 4 to
    ``image_size / 2`` px long, centred anywhere, turned by the class's angle ± 10°, in Gaussian noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(ORIENTATIONS), (samples,), generator=generator)
    angle = torch.tensor(ORIENTATIONS)[labels][:, None] + 20 * (torch.rand(samples, bars, generator=generator) - 0.5)
    angle = angle * (math.pi / 180)
    length = 4 + (image_size / 2 - 4) * torch.rand(samples, bars, generator=generator)
    centre = image_size * (0.15 + 0.7 * torch.rand(samples, bars, 2, generator=generator))
    grid = torch.arange(image_size, dtype=torch.float32)
    rows, columns = torch.meshgrid(grid, grid, indexing='ij')  # (size, size)
    offset_rows = rows[None, None] - centre[..., 0, None, None]
    offset_columns = columns[None, None] - centre[..., 1, None, None]
    direction_rows, direction_columns = -torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    along = offset_rows * direction_rows + offset_columns * direction_columns
    across = offset_columns * direction_rows - offset_rows * direction_columns
    outside = (along.abs() - length[..., None, None] / 2).clamp_min(0)
    images = torch.exp(-(across.square() + outside.square()) / (2 * 0.7**2)).amax(1)  # (samples, size, size)
    images = images + noise * torch.randn(images.shape, generator=generator)
    return TensorDataset(images[:, None], labels)


def oriented_cnn(
    kernel_size: int, covariance_type: str, width: int = 12, num_classes: int = len(ORIENTATIONS)
) -> nn.Module:
    """Three blocks (``AdaptiveConv2d`` k×k of ``covariance_type`` with the paper's sigma_init (0.1, 0.5),
    BN, ReLU; max-pool 2 after the first two) of ``width``, ``2 width``, ``2 width`` channels, global
    average pooling and a linear classifier."""
    blocks: List[nn.Module] = []
    channels = ((1, width), (width, 2 * width), (2 * width, 2 * width))
    for index, (in_channels, out_channels) in enumerate(channels):
        blocks += [
            AdaptiveConv2d(
                in_channels, out_channels, kernel_size, padding='same', bias=False, covariance_type=covariance_type
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        ]
        if index < 2:
            blocks.append(nn.MaxPool2d(2))
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


@dataclass
class OrientedComparison:
    """Peak validation accuracies ``peaks[covariance_type]`` (one per repeat), the test rows, the table."""

    peaks: Dict[str, List[float]]
    rows: List[Dict]
    markdown: str


def run_oriented_comparison(config: OrientedCompareConfig) -> OrientedComparison:
    """Trains every (covariance type, repeat) run with the engine; repeat r uses seed ``seed + r`` for its
    data (training and validation sets drawn anew) and every type's initialization."""
    peaks: Dict[str, List[float]] = {kind: [] for kind in config.covariance_types}
    for kind in config.covariance_types:
        for repeat in range(config.repeats):
            seed = config.seed + repeat
            train = oriented_bars(config.train_samples, config.image_size, config.bars, config.noise, seed=2 * seed)
            val = oriented_bars(config.val_samples, config.image_size, config.bars, config.noise, seed=2 * seed + 1)
            set_seed(seed)
            model = oriented_cnn(config.kernel_size, kind, width=config.width)
            peaks[kind].append(
                peak_val_accuracy(config, model, train, val, Path(config.output_dir) / kind / f'seed{seed}', seed)
            )
    others = [kind for kind in config.covariance_types if kind != 'spherical']
    rows = [dict(covariance_type=kind, **_test_row(peaks['spherical'], peaks[kind])) for kind in others]
    for row, adjusted in zip(rows, holm_adjust([row['p'] for row in rows])):
        row['p_holm'] = adjusted
    return OrientedComparison(peaks, rows, _markdown(config, peaks, rows))


def _markdown(config: OrientedCompareConfig, peaks: Dict[str, List[float]], rows: List[Dict]) -> str:
    def cell(values: List[float]) -> str:
        mean = sum(values) / len(values)
        std = (sum((value - mean) ** 2 for value in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        return f'{100 * mean:.2f}±{100 * std:.2f} | {100 * max(values):.2f}'

    def number(value, spec: str) -> str:
        return '–' if value is None else format(value, spec)

    tests = {row['covariance_type']: row for row in rows}
    size = config.kernel_size
    lines = [
        f'### {size}×{size} adaptive CNN on oriented bars, by covariance_type ({config.repeats} repeats, '
        f'{config.epochs} epochs)',
        '',
        '| covariance_type | mean±std (%) | max (%) | t | p | p (Holm) | d |',
        '|---|---|---|---|---|---|---|',
    ]
    for kind in config.covariance_types:
        row = tests.get(kind)
        star = '*' if row is not None and row['p'] is not None and row['p'] < 0.05 else ''
        stats = (
            '– | – | – | –'
            if row is None
            else f'{number(row["t"], ".2f")} | {number(row["p"], ".3g")}{star} | {number(row["p_holm"], ".3g")} '
            f'| {number(row["d"], ".2f")}'
        )
        lines.append(f'| {kind} | {cell(peaks[kind])} | {stats} |')
    lines += [
        '',
        'Peak validation accuracy over epochs, std with ddof=1. t, p: two-tailed Student t-test of each type '
        "against 'spherical' (* p < 0.05); p (Holm): corrected for the tests made; d: Cohen's d (pooled std).",
    ]
    return '\n'.join(lines)
