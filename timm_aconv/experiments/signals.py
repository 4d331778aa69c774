"""1-D: the paper's Algorithm 1 on generated waveforms whose informative time scale varies

Not a paper experiment: ordinary (CONV, ``nn.Conv1d``) against adaptive (ACONV,
:class:`~timm_aconv.layers.adaptive_conv.AdaptiveConv1d`) 1-D CNNs of the same architecture, for
every kernel size and ``repeats`` seeds, peak validation accuracy per run, the paper's t-test table
(:func:`timm_aconv.experiments.compare.comparison_markdown`).

The task (:func:`waveforms`): each signal is one period-``T`` waveform of one of four classes (sine,
square, triangle, sawtooth) with ``T`` drawn log-uniformly from ``periods`` (a factor 10 by default),
a random phase and amplitude, in Gaussian noise. A filter that separates the classes at one time
scale does not at another: the size a kernel needs varies from sample to sample.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from ..engine.config import ConfigError
from ..engine.trainer import set_seed
from ..layers.adaptive_conv import AdaptiveConv1d
from .compare import ARMS, best_sizes, best_versus_best, comparison_markdown, summarize
from .generated_runs import GeneratedTaskConfig, peak_val_accuracy

__all__ = ['WAVEFORMS', 'SignalCompareConfig', 'SignalComparison', 'run_signal_comparison', 'signal_cnn', 'waveforms']

WAVEFORMS = ('sine', 'square', 'triangle', 'sawtooth')


@dataclass
class SignalCompareConfig(GeneratedTaskConfig):
    """Algorithm 1 on :func:`waveforms`; the engine's settings apply to every run."""

    output_dir: str = 'runs/signals'
    epochs: int = 8
    kernel_sizes: List[int] = field(default_factory=lambda: [3, 9, 15])
    repeats: int = 3
    length: int = 128
    periods: Tuple[float, float] = (4.0, 40.0)
    noise: float = 0.5
    train_samples: int = 1200
    val_samples: int = 400
    width: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kernel_sizes or any(size < 1 or size % 2 == 0 for size in self.kernel_sizes):
            raise ConfigError(f'kernel_sizes must be odd sizes >= 3, got {self.kernel_sizes}')
        if not 1 < self.periods[0] < self.periods[1]:
            raise ConfigError(f'periods must be (shortest, longest) with 1 < shortest < longest, got {self.periods}')
        for name in ('repeats', 'length', 'train_samples', 'val_samples', 'width', 'batch_size'):
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')


def waveforms(
    samples: int, length: int = 128, periods: Tuple[float, float] = (4.0, 40.0), noise: float = 0.5, seed: int = 0
) -> TensorDataset:
    """``samples`` signals of shape (1, length) and their classes (indices into :data:`WAVEFORMS`)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(WAVEFORMS), (samples,), generator=generator)
    log_low, log_high = math.log(periods[0]), math.log(periods[1])
    period = torch.exp(log_low + (log_high - log_low) * torch.rand(samples, 1, generator=generator))
    phase = torch.rand(samples, 1, generator=generator)
    amplitude = 0.5 + torch.rand(samples, 1, generator=generator)
    cycle = (torch.arange(length).float() / period + phase) % 1.0  # position within the period, [0, 1)
    shapes = torch.stack(
        [
            torch.sin(2 * math.pi * cycle),
            torch.where(cycle < 0.5, 1.0, -1.0),
            1 - 4 * (cycle - 0.5).abs(),
            2 * cycle - 1,
        ]
    )
    signal = shapes[labels, torch.arange(samples)] * amplitude
    signal = signal + noise * torch.randn(samples, length, generator=generator)
    return TensorDataset(signal[:, None], labels)


def signal_cnn(kernel_size: int, adaptive: bool, width: int = 16, num_classes: int = len(WAVEFORMS)) -> nn.Module:
    """Three convolution blocks (conv, BN, ReLU, max-pool 2) of ``width``, ``2 width``, ``2 width``
    channels, global average pooling and a linear classifier; ``adaptive``: ``AdaptiveConv1d`` layers
    with the paper's sigma_init (0.1, 0.5), else ``nn.Conv1d``."""

    def conv(in_channels, out_channels):
        if adaptive:
            return AdaptiveConv1d(in_channels, out_channels, kernel_size, padding='same', bias=False)
        return nn.Conv1d(in_channels, out_channels, kernel_size, padding='same', bias=False)

    blocks = []
    for in_channels, out_channels in ((1, width), (width, 2 * width), (2 * width, 2 * width)):
        blocks += [conv(in_channels, out_channels), nn.BatchNorm1d(out_channels), nn.ReLU(), nn.MaxPool1d(2)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


@dataclass
class SignalComparison:
    """Peak validation accuracies ``peaks[arm][size]`` (one per repeat), the table's rows, the table."""

    peaks: Dict[str, Dict[int, List[float]]]
    rows: List[Dict]
    best_size: int
    markdown: str


def run_signal_comparison(config: SignalCompareConfig) -> SignalComparison:
    """Trains every (arm, kernel size, repeat) run with the engine; repeat r uses seed ``seed + r`` for
    its data (training and validation sets drawn anew) and both arms' initialization."""
    peaks: Dict[str, Dict[int, List[float]]] = {arm: {size: [] for size in config.kernel_sizes} for arm in ARMS}
    for size in config.kernel_sizes:
        for arm in ARMS:
            for repeat in range(config.repeats):
                seed = config.seed + repeat
                train = waveforms(config.train_samples, config.length, config.periods, config.noise, seed=2 * seed)
                val = waveforms(config.val_samples, config.length, config.periods, config.noise, seed=2 * seed + 1)
                set_seed(seed)
                model = signal_cnn(size, adaptive=arm == 'ACONV', width=config.width)
                peaks[arm][size].append(
                    peak_val_accuracy(
                        config,
                        model,
                        train,
                        val,
                        Path(config.output_dir) / f'{arm.lower()}_k{size}' / f'seed{seed}',
                        seed,
                    )
                )
    rows, best_row = summarize(peaks), best_versus_best(peaks)
    best_size = best_sizes(peaks)['both']
    title = f'1-D CNN, CONV vs ACONV on generated waveforms ({config.repeats} repeats, {config.epochs} epochs)'
    return SignalComparison(peaks, rows, best_size, comparison_markdown(rows, best_row, best_size, title, dims=1))
