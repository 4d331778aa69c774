""":class:`EngineConfig`: the training loop's settings (validated), and the optimizer they describe

Recipes subclass :class:`EngineConfig` with their model and data fields; every field is a YAML key
and a command-line flag (:mod:`timm_aconv.engine.config`, help text in :mod:`~timm_aconv.engine.cli_help`).
"""

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn as nn

from ..layers import param_groups
from .config import ConfigError

__all__ = ['COMPILE_MODES', 'EngineConfig', 'create_optimizer']

# torch.compile's modes (reduce-overhead: CUDA graphs of the compiled forward and backward)
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


@dataclass
class EngineConfig:
    """Training-loop settings (recipes subclass this with their model and data fields)."""

    output_dir: str = 'runs/default'
    epochs: int = 10
    optimizer: Literal['sgd', 'adam', 'adamw'] = 'sgd'
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    sigma_lr_scale: float = 1.0
    clip_value: Optional[float] = 1.0
    clip_norm: Optional[float] = None
    scheduler: Literal['constant', 'plateau', 'one_cycle'] = 'plateau'
    monitor: str = 'val_loss'
    monitor_mode: Literal['min', 'max'] = 'min'
    plateau_factor: float = 0.9
    plateau_patience: int = 10
    plateau_cooldown: int = 10
    min_lr: float = 1e-5
    one_cycle_floor_lr: float = 1e-4
    grad_accum_steps: int = 1
    max_steps_per_epoch: Optional[int] = None
    mixed_precision: Literal['no', 'fp16', 'bf16'] = 'no'
    cpu: bool = False  # force CPU; multi-process CPU runs (torchrun/gloo) need it, like `accelerate launch --cpu`
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    overwrite: bool = False  # recipes refuse an output_dir holding a run unless resume or overwrite
    save_every: int = 1
    keep_checkpoints: int = 2
    save_best: bool = True
    log_with: Literal['auto', 'none', 'tensorboard', 'wandb', 'mlflow', 'comet_ml', 'aim', 'clearml', 'dvclive'] = (
        'auto'
    )
    progress: bool = True
    print_epochs: bool = True
    num_threads: Optional[int] = None
    compile: Union[Literal['auto'], bool] = 'auto'  # torch.compile the model; 'auto': on a CUDA device
    compile_mode: Optional[str] = None  # torch.compile mode: null (default), reduce-overhead (CUDA graphs), ...
    size_budget: Optional[float] = None  # kernel FLOPs of the adaptive layers, relative to full grids; null: none
    size_budget_weight: float = 0.1  # higher: lands faster but further below the budget
    train_crop_tol: Optional[float] = None  # train each adaptive layer at its learned window; null: full grid
    train_crop_interval: int = 10  # optimizer steps between two reads of sigma that choose the windows

    def __post_init__(self) -> None:
        positive_ints = ('epochs', 'grad_accum_steps')
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ConfigError(f'{name} must be >= 1, got {getattr(self, name)}')
        for name in ('lr', 'sigma_lr_scale', 'plateau_factor'):
            if getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be > 0, got {getattr(self, name)}')
        for name in (
            'weight_decay',
            'momentum',
            'min_lr',
            'one_cycle_floor_lr',
            'plateau_patience',
            'plateau_cooldown',
            'save_every',
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)}')
        for name in ('clip_value', 'clip_norm'):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f'{name} must be > 0 or null (no clipping), got {getattr(self, name)}')
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f'num_threads must be >= 1 or null (torch default), got {self.num_threads}')
        if self.max_steps_per_epoch is not None and (
            self.max_steps_per_epoch < 1 or self.max_steps_per_epoch % self.grad_accum_steps
        ):
            raise ConfigError(
                f'max_steps_per_epoch must be a positive multiple of grad_accum_steps={self.grad_accum_steps} '
                f'(it counts batches), got {self.max_steps_per_epoch}'
            )
        if self.plateau_factor >= 1:
            raise ConfigError(f'plateau_factor must be in (0, 1), got {self.plateau_factor}')
        if self.keep_checkpoints < 2:
            raise ConfigError(
                f'keep_checkpoints must be >= 2 (Accelerate deletes the oldest checkpoint before it writes '
                f'the next, so with 1 an interrupted save leaves none), got {self.keep_checkpoints}'
            )
        if not (isinstance(self.compile, bool) or self.compile == 'auto'):
            raise ConfigError(f"compile must be 'auto', true or false, got {self.compile!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ConfigError(
                f'compile_mode must be null or one of {", ".join(COMPILE_MODES)}, got {self.compile_mode!r}'
            )
        if self.size_budget is not None and not 0 < self.size_budget <= 1:
            raise ConfigError(
                f'size_budget must be in (0, 1] (kernel FLOPs relative to the full grids) or null, '
                f'got {self.size_budget}'
            )
        if self.size_budget_weight <= 0:
            raise ConfigError(f'size_budget_weight must be > 0, got {self.size_budget_weight}')
        if self.train_crop_tol is not None and not 0 < self.train_crop_tol < 1:
            raise ConfigError(
                f'train_crop_tol must be in (0, 1) (the energy share the training crop may drop) or null, '
                f'got {self.train_crop_tol}'
            )
        if self.train_crop_interval < 1:
            raise ConfigError(f'train_crop_interval must be >= 1 (optimizer steps), got {self.train_crop_interval}')


def create_optimizer(model: nn.Module, config: EngineConfig) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over :func:`timm_aconv.param_groups` (sigma: no weight decay, own lr scale)."""
    groups = param_groups(model, weight_decay=config.weight_decay, lr=config.lr, sigma_lr_scale=config.sigma_lr_scale)
    if config.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == 'adam':
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)
