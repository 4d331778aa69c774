""":class:`EngineConfig`: the training loop's settings (typed, documented, validated), and the optimizer they describe

Recipes subclass it with their model and data fields. Every field is a YAML key and a ``--key``
(:mod:`timm_aconv.engine.config`): its type is its check (ranges: :mod:`jsonargparse.typing`,
:mod:`~timm_aconv.engine.config_types`), the docstring under it its help line. ``__post_init__`` checks a
config built in Python the same way, then the rule that ties two fields together.
"""

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
import torch.nn as nn
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, OpenUnitInterval, PositiveFloat, PositiveInt

from ..layers import param_groups
from .config import ConfigError, check_fields
from .config_types import AtLeastTwo, LeftOpenUnitInterval, Optimizer, Scheduler

__all__ = ['CompileMode', 'EngineConfig', 'Tracker', 'create_optimizer']

# torch.compile's modes (reduce-overhead: CUDA graphs of the compiled forward and backward)
CompileMode = Literal['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs']
Tracker = Literal['auto', 'none', 'tensorboard', 'wandb', 'mlflow', 'comet_ml', 'aim', 'clearml', 'dvclive']


@dataclass
class EngineConfig:
    """Training-loop settings (recipes subclass this with their model and data fields)."""

    output_dir: str = 'runs/default'
    """folder for metrics, checkpoints, weights and figures"""
    epochs: PositiveInt = 10
    """training epochs"""
    optimizer: Optimizer = 'sgd'
    """optimizer over timm_aconv.param_groups (sigma: no weight decay)"""
    lr: PositiveFloat = 0.01
    """learning rate (peak rate of the one_cycle schedule)"""
    momentum: NonNegativeFloat = 0.9
    """SGD momentum"""
    weight_decay: NonNegativeFloat = 0.0
    """L2 weight decay of weights (never of sigma, norms or biases)"""
    sigma_lr_scale: PositiveFloat = 1.0
    """sigma's learning rate = lr × sigma_lr_scale"""
    clip_value: Optional[PositiveFloat] = 1.0
    """clip every gradient (sigma too) into [-v, v] (Keras clipvalue); null: no clipping"""
    clip_norm: Optional[PositiveFloat] = None
    """clip the total gradient norm; null: no clipping"""
    scheduler: Scheduler = 'plateau'
    """learning-rate schedule: constant, reduce-on-plateau per epoch, the paper's one-cycle"""
    monitor: str = 'val_loss'
    """metric for the plateau schedule and the best_* column (val_loss, val_accuracy, ...)"""
    monitor_mode: Literal['min', 'max'] = 'min'
    """whether a lower (min) or higher (max) monitor is better"""
    plateau_factor: OpenUnitInterval = 0.9
    """reduce-on-plateau: multiply the lr by this factor"""
    plateau_patience: NonNegativeInt = 10
    """reduce-on-plateau: epochs without improvement before reducing"""
    plateau_cooldown: NonNegativeInt = 10
    """reduce-on-plateau: epochs to wait after a reduction"""
    min_lr: NonNegativeFloat = 1e-5
    """reduce-on-plateau: lowest learning rate"""
    one_cycle_floor_lr: NonNegativeFloat = 1e-4
    """one_cycle: learning rate at the start and the end"""
    grad_accum_steps: PositiveInt = 1
    """batches per optimizer step (gradient accumulation)"""
    max_steps_per_epoch: Optional[PositiveInt] = None
    """stop each epoch after this many batches, a multiple of grad_accum_steps; null: the whole training set"""
    mixed_precision: Literal['no', 'fp16', 'bf16'] = 'no'
    """Accelerate mixed precision"""
    cpu: bool = False
    """train on CPU; multi-process CPU runs (torchrun) need it, like accelerate launch --cpu"""
    seed: int = 0
    """random seed (comparisons use seed, seed + 1, ... per repeat)"""
    deterministic: bool = False
    """torch.use_deterministic_algorithms (warn only)"""
    resume: bool = False
    """continue the run in output_dir (finished runs of a comparison are read back)"""
    overwrite: bool = False
    """write into an output_dir that already holds a run, replacing its files"""
    save_every: NonNegativeInt = 1
    """write a checkpoint every n epochs (0: none)"""
    keep_checkpoints: AtLeastTwo = 2
    """checkpoints kept in output_dir/checkpoints, the newest complete one resumes (Accelerate deletes the
    oldest before it writes the next: with 1, an interrupted save would leave none)"""
    save_best: bool = True
    """also keep the best model by monitor in output_dir/best"""
    log_with: Tracker = 'auto'
    """experiment tracker (auto: TensorBoard when installed)"""
    progress: bool = True
    """progress bar on an interactive terminal (never in piped logs)"""
    print_epochs: bool = True
    """print one line per epoch: loss, monitored metric, lr, sigma range"""
    num_threads: Optional[PositiveInt] = None
    """torch CPU threads per process (results depend on it); null: torch's default"""
    compile: Union[Literal['auto'], bool] = 'auto'
    """torch.compile the model: auto (on CUDA devices), true or false"""
    compile_mode: Optional[CompileMode] = None
    """torch.compile mode when compiling: null (torch default), reduce-overhead (CUDA graphs of the compiled
    step), max-autotune, max-autotune-no-cudagraphs"""
    size_budget: Optional[LeftOpenUnitInterval] = None
    """kernel FLOPs of the adaptive layers relative to their full grids, in (0, 1]; null: no budget"""
    size_budget_weight: PositiveFloat = 0.1
    """weight of the size penalty in the loss (higher lands faster, further below)"""
    train_crop_tol: Optional[OpenUnitInterval] = None
    """train each adaptive layer at the smallest window holding all but this share of its envelope energy
    (and of its derivative in sigma), e.g. 1e-3; null: the full grid (the paper)"""
    train_crop_interval: PositiveInt = 10
    """optimizer steps between two reads of sigma that choose the training windows"""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch % self.grad_accum_steps:
            raise ConfigError(
                f'max_steps_per_epoch must be a positive multiple of grad_accum_steps={self.grad_accum_steps} '
                f'(it counts batches), got {self.max_steps_per_epoch}'
            )


def create_optimizer(model: nn.Module, config: EngineConfig) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW over :func:`timm_aconv.param_groups` (sigma: no weight decay, own lr scale)."""
    groups = param_groups(model, weight_decay=config.weight_decay, lr=config.lr, sigma_lr_scale=config.sigma_lr_scale)
    if config.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    if config.optimizer == 'adam':
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)
