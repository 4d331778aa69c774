"""What the engine does to a model's adaptive layers before training, and the trackers it logs to

:func:`prepare_adaptive_layers`: the sigma clamp on the optimizer, the product kernels computed
together, training at the learned size (``train_crop_tol``), and a clear error when a setting needs
adaptive layers the model lacks. :func:`resolve_trackers` / :func:`tracker_config`: Accelerate's
trackers for ``log_with`` and the config values they accept.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from ..layers import adaptive_layers, group_adaptive_layers, register_sigma_clamp, set_train_crop
from .config import ConfigError, config_to_dict
from .engine_config import EngineConfig

__all__ = ['prepare_adaptive_layers', 'resolve_trackers', 'tracker_config']


def prepare_adaptive_layers(
    model: nn.Module, optimizer: torch.optim.Optimizer, config: EngineConfig
) -> RemovableHandle:
    """Clamps sigma after every real step of ``optimizer``, groups ``model``'s adaptive layers and sets
    their training crop; returns the clamp's hook handle. A :class:`ConfigError` when ``size_budget``
    or ``train_crop_tol`` is set for a model without adaptive layers."""
    handle = register_sigma_clamp(optimizer, model)
    group_adaptive_layers(model)  # product kernels computed together (registered models are grouped already)
    needing = [(name, getattr(config, name)) for name in ('size_budget', 'train_crop_tol') if getattr(config, name)]
    if needing and next(adaptive_layers(model), None) is None:
        name, value = needing[0]
        raise ConfigError(f'{name}={value} needs a model with adaptive layers, and {type(model).__name__} has none')
    if config.train_crop_tol is not None:
        set_train_crop(model, config.train_crop_tol, config.train_crop_interval)
    return handle


def resolve_trackers(log_with: str) -> Optional[List[str]]:
    """Accelerate's ``log_with`` for the config's value ('auto': TensorBoard when installed)."""
    if log_with == 'none':
        return None
    if log_with == 'auto':
        from accelerate.utils import is_tensorboard_available

        return ['tensorboard'] if is_tensorboard_available() else None
    return [log_with]


def tracker_config(config: EngineConfig) -> Dict[str, Any]:
    """The config as trackers (TensorBoard hparams) take it: scalars and strings only."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value)
        for key, value in config_to_dict(config).items()
    }
