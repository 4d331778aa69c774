"""DataLoaders for the recipes: ``batch_size`` is the global batch over all processes

Accelerate shards a prepared loader so that each process draws its own batches of the loader's
``batch_size``; with N processes an optimizer step then averages N × ``batch_size`` samples.
The recipes' ``batch_size`` is the *global* batch instead (the experiment's batch, e.g. the
paper's 128, whatever the number of GPUs): each process loads ``batch_size / N`` samples, so
one process and N processes take the same optimizer steps per epoch with the same learning
rate. A global batch that N does not divide is an error naming both numbers.
"""

import math
from typing import Optional, Tuple

from torch.utils.data import DataLoader, Dataset

from .config import ConfigError
from .launch import process_state

__all__ = ['build_loaders', 'process_batch_size']


def process_batch_size(global_batch_size: int, num_processes: int, name: str = 'batch_size') -> int:
    """``global_batch_size / num_processes``, or a ConfigError naming both when it does not divide."""
    if global_batch_size % num_processes:
        raise ConfigError(
            f'{name}={global_batch_size} is the global batch over all processes and must be divisible by the '
            f'number of processes ({num_processes}); use a multiple of {num_processes}, e.g. '
            f'{name}={num_processes * max(1, round(global_batch_size / num_processes))}'
        )
    return global_batch_size // num_processes


def build_loaders(
    train_set: Dataset,
    val_set: Dataset,
    batch_size: int,
    val_batch_size: Optional[int] = None,
    num_workers: int = 0,
    cpu: bool = False,
) -> Tuple[DataLoader, DataLoader]:
    """Shuffled training and ordered validation loaders of per-process batches.

    ``batch_size`` and ``val_batch_size`` (default ``batch_size``) are global; the number of
    processes is Accelerate's (``cpu`` as the run's ``EngineConfig.cpu``). The validation batch
    is split rounding up, since it does not change results.
    """
    processes = process_state(cpu).num_processes
    train_loader = DataLoader(
        train_set,
        batch_size=process_batch_size(batch_size, processes),
        shuffle=True,
        num_workers=num_workers,
        drop_last=False,
    )
    val_loader = DataLoader(
        val_set,
        batch_size=math.ceil((val_batch_size or batch_size) / processes),
        shuffle=False,
        num_workers=num_workers,
    )
    return train_loader, val_loader
