"""What the experiments on generated data share: their engine defaults and one run's peak accuracy

The 1-D (:mod:`~timm_aconv.experiments.signals`) and 2-D elliptic (:mod:`~timm_aconv.experiments.oriented`)
experiments train many small models on tensors generated in memory: each run is the engine's classification
loop with :class:`GeneratedTaskConfig`'s settings, reduced to its peak validation accuracy.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch.nn as nn
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from torch.utils.data import DataLoader, Dataset

from ..engine.config_types import Scheduler
from ..engine.engine_config import EngineConfig, Tracker
from ..engine.metrics import ClassificationMetric
from ..engine.trainer import Trainer

__all__ = ['GeneratedTaskConfig', 'peak_val_accuracy']


@dataclass
class GeneratedTaskConfig(EngineConfig):
    """The engine's settings for quick runs on generated data: constant rate, clipping, no logs or checkpoints."""

    batch_size: PositiveInt = 32
    """training batch size"""
    scheduler: Scheduler = 'constant'
    clip_value: Optional[PositiveFloat] = 1.0
    progress: bool = False
    print_epochs: bool = False
    log_with: Tracker = 'none'
    save_best: bool = False
    save_every: NonNegativeInt = 0


def peak_val_accuracy(
    config: EngineConfig, model: nn.Module, train: Dataset, val: Dataset, output_dir: Path, seed: int
) -> float:
    """Trains ``model`` on ``train`` with ``config``'s engine settings (in ``output_dir``, seeded with ``seed``)
    and returns its highest validation accuracy over the epochs."""
    run = EngineConfig(
        **{
            name: getattr(config, name)
            for name in EngineConfig.__dataclass_fields__
            if name not in ('output_dir', 'seed', 'overwrite')
        },
        output_dir=str(output_dir),
        seed=seed,
        overwrite=True,
    )
    loaders = (DataLoader(train, batch_size=config.batch_size, shuffle=True), DataLoader(val, batch_size=256))
    history = Trainer(model, *loaders, run, nn.CrossEntropyLoss(), ClassificationMetric()).fit()
    return max(record['val_accuracy'] for record in history)
