"""Training at the learned size: each adaptive layer convolves with the window its apertures need

With ``train_crop_tol`` set, an adaptive layer (any dimension, any ``covariance_type``) in training mode
convolves with the centred ``crop_window`` of its product kernel: the smallest box of odd sides that holds
all but ``train_crop_tol`` of every filter's envelope energy (and of its derivatives), so a 7×7 layer whose
apertures shrank trains at 3×3 or 5×5 cost, and an elliptic one at, say, 7×3. The box is square (a cube)
for the paper's circular envelope on a square grid, else a side per axis. The padding shrinks with the
window (or the input's border is trimmed), so outputs keep their shape and position
(:func:`timm_aconv.layers.window.window_conv`); evaluation, ``fuse_convs`` and the exports still use the
full kernel.

The window depends on sigma's values, and reading them synchronises a GPU with the host, so the
training forward never does: a post-step hook of every torch optimizer (installed on import) reads
the sigmas of each cropping layer once every ``train_crop_interval`` optimizer steps and sets its
next window. Between two reads sigma moves, so each window is chosen for apertures wider than the
read ones: ``train_crop_margin`` (10%) wider, plus the growth since the previous read extrapolated to
the next. A read that finds the window in use too small for the current apertures counts in the
layer's ``train_crop_overruns``. Processes of a distributed run read identical sigmas (after the
gradients' all-reduce), so they choose the same windows.

    >>> set_train_crop(model, 1e-3)                     # every adaptive layer; None turns it off
    >>> crop_windows(model)                             # {layer name: (3, 3), ...}
"""

from typing import Dict, Optional, Tuple

import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .adaptive_conv import CROPPING_LAYERS, TRAIN_CROP_INTERVAL, TRAIN_CROP_MARGIN, check_crop_interval
from .kernel_group import OptimizerSteps
from .sigma import adaptive_layers, named_adaptive_layers

__all__ = ['crop_windows', 'refresh_crop_windows', 'set_train_crop']


def set_train_crop(
    model: nn.Module,
    train_crop_tol: Optional[float],
    interval: int = TRAIN_CROP_INTERVAL,
    margin: float = TRAIN_CROP_MARGIN,
) -> nn.Module:
    """Sets ``train_crop_tol`` (None: off), ``train_crop_interval`` and ``train_crop_margin`` on every
    adaptive layer of ``model`` and chooses their first windows (one read of sigma per layer).

    Args:
        model: any module with adaptive layers (a ValueError when there is none).
        train_crop_tol: the share of each filter's envelope energy the training crop may drop, in (0, 1),
            or None for the full kernel (the paper's layer).
        interval: optimizer steps between two reads of sigma.
        margin: how much wider than the read apertures each window is planned for (0.1: 10%).

    Returns:
        ``model``.
    """
    interval = check_crop_interval(interval)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
        raise ValueError(f'margin must be a number >= 0 (a relative widening of sigma), got {margin!r}')
    layers = list(adaptive_layers(model))
    if train_crop_tol is not None and not layers:
        raise ValueError(f'set_train_crop: {type(model).__name__} has no adaptive layer to train at its learned size')
    for layer in layers:
        layer.train_crop_interval, layer.train_crop_margin = interval, float(margin)
        layer.train_crop_tol = train_crop_tol
    return model


def refresh_crop_windows(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """Reads sigma now and sets the next window of every cropping layer of ``model`` (for training
    loops that change sigma without a torch optimizer's ``step()``); returns them by layer name."""
    windows = {}
    for name, layer in named_adaptive_layers(model):
        window = layer.refresh_crop_window()
        if window is not None:
            windows[name] = window
    return windows


def crop_windows(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """The window each cropping layer of ``model`` trains with now, by layer name (no read of sigma)."""
    return {
        name: layer.crop_window
        for name, layer in named_adaptive_layers(model)
        if layer.train_crop_tol is not None and layer.crop_window is not None
    }


def _refresh_due_windows(_optimizer, _args, _kwargs) -> None:
    """After every optimizer step (and after the sigma clamp, registered before): the layers whose
    last read is ``train_crop_interval`` steps old read sigma again."""
    if not CROPPING_LAYERS:
        return
    for layer in list(CROPPING_LAYERS):
        if OptimizerSteps.count - layer._crop_read_step >= layer.train_crop_interval:
            layer.refresh_crop_window()


register_optimizer_step_post_hook(_refresh_due_windows)
