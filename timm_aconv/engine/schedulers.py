"""Learning-rate schedules of the paper's recipes

- ``constant``: the optimizer's learning rate throughout.
- ``plateau``: :class:`torch.optim.lr_scheduler.ReduceLROnPlateau` on a validation metric,
  stepped once per epoch (the simple-CNN and U-Net runs: ×0.9 after 10 epochs without
  improvement, cooldown 10, minimum 1e-5).
- ``one_cycle``: the ResNet runs' per-iteration Gaussian bump (the paper calls it one-cycle),
  ``lr(t) = floor_lr + peak_lr · exp(-((t - c) / (0.5 c))²)`` with ``c`` half the optimizer
  steps, stepped after every real optimizer step (:class:`GaussianOneCycleLR`).
"""

import math
from typing import Optional, Union

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

__all__ = ['SCHEDULERS', 'GaussianOneCycle', 'GaussianOneCycleLR', 'create_scheduler']

SCHEDULERS = ('constant', 'plateau', 'one_cycle')

Scheduler = Union[LRScheduler, ReduceLROnPlateau]


class GaussianOneCycle:
    """Picklable LR factor of the Gaussian one-cycle schedule (a ``LambdaLR`` ``lr_lambda``).

    The factor multiplies each group's initial learning rate, which the recipe sets to the peak:
    ``factor(t) = floor_lr / peak_lr + exp(-((t - c) / (0.5 c))²)``, ``c = total_steps / 2``.
    """

    def __init__(self, total_steps: int, peak_lr: float, floor_lr: float) -> None:
        if total_steps < 1:
            raise ValueError(f'one_cycle needs total_steps >= 1, got {total_steps}')
        if peak_lr <= 0 or floor_lr < 0:
            raise ValueError(f'one_cycle needs peak_lr > 0 and floor_lr >= 0, got {peak_lr}, {floor_lr}')
        self.centre = total_steps / 2.0
        self.floor_ratio = floor_lr / peak_lr

    def __call__(self, step: int) -> float:
        width = 0.5 * self.centre
        return self.floor_ratio + math.exp(-(((step - self.centre) / width) ** 2))


def GaussianOneCycleLR(optimizer: torch.optim.Optimizer, total_steps: int, floor_lr: float = 1e-4) -> LambdaLR:
    """The paper's one-cycle schedule; the optimizer's (first group's) lr is the peak ``0.5·η``."""
    peak_lr = optimizer.param_groups[0]['lr']
    return LambdaLR(optimizer, GaussianOneCycle(total_steps, peak_lr, floor_lr))


def create_scheduler(
    name: str,
    optimizer: torch.optim.Optimizer,
    total_steps: int = 0,
    floor_lr: float = 1e-4,
    plateau_mode: str = 'min',
    plateau_factor: float = 0.9,
    plateau_patience: int = 10,
    plateau_cooldown: int = 10,
    min_lr: float = 1e-5,
) -> Optional[Scheduler]:
    """A scheduler by name (``constant`` gives None: nothing to step)."""
    if name == 'constant':
        return None
    if name == 'plateau':
        return ReduceLROnPlateau(
            optimizer,
            mode=plateau_mode,
            factor=plateau_factor,
            patience=plateau_patience,
            cooldown=plateau_cooldown,
            min_lr=min_lr,
        )
    if name == 'one_cycle':
        return GaussianOneCycleLR(optimizer, total_steps=total_steps, floor_lr=floor_lr)
    raise ValueError(f'scheduler must be one of {SCHEDULERS}, got {name!r}')
