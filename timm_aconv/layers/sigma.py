"""Training helpers for the apertures (sigma) of adaptive layers

The paper clips every sigma into [1/n, n] after each optimizer update (section 3.3,
Algorithm 1) and its code keeps sigma out of the L2 penalty. These helpers give a whole
model that treatment:

    >>> optimizer = torch.optim.SGD(timm_aconv.param_groups(model, weight_decay=1e-4), lr=0.1)
    >>> handle = timm_aconv.register_sigma_clamp(optimizer, model)  # clamps after every step()

Without it the clamp happens anyway: a post-step hook of every torch optimizer (installed on
import, :func:`set_auto_sigma_clamp` turns it off) clamps the sigmas that optimizer holds after
each of its steps, unless a :func:`register_sigma_clamp` hook on it does so already.
"""

import operator
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle
from torch.utils.weak import WeakIdKeyDictionary

from .adaptive_conv import AdaptiveConvNd
from .covariance import SIGMA_OWNERS, envelope_parameters

__all__ = [
    'adaptive_layers',
    'clamp_sigmas_',
    'named_adaptive_layers',
    'param_groups',
    'register_sigma_clamp',
    'set_auto_sigma_clamp',
]


def named_adaptive_layers(model: nn.Module) -> Iterator[Tuple[str, AdaptiveConvNd]]:
    """(qualified name, layer) of every adaptive convolution in ``model`` (:class:`~timm_aconv.AdaptiveConv1d`,
    ``AdaptiveConv2d``, ``AdaptiveConv3d``), in module order (a shared module once, under its first name)."""
    return ((name, module) for name, module in model.named_modules() if isinstance(module, AdaptiveConvNd))


def adaptive_layers(model: nn.Module) -> Iterator[AdaptiveConvNd]:
    """Every adaptive convolution in ``model`` (each shared module once)."""
    return (module for _, module in named_adaptive_layers(model))


def clamp_sigmas_(model: nn.Module) -> int:
    """Clip the sigma of every adaptive layer in ``model`` into its bounds; returns the layer count.

    One ``torch._foreach_clamp_min_`` and one ``torch._foreach_clamp_max_`` call per device and dtype
    (a single multi-tensor kernel each on a GPU) for the layers with one aperture per filter, one
    ``torch._foreach_maximum_`` and ``torch._foreach_minimum_`` for those with bounds per axis; not one clamp
    per layer.
    """
    layers = list(adaptive_layers(model))
    apply_clamps(prepare_clamps([(layer.sigma, layer) for layer in layers]))
    return len(layers)


class PreparedClamps(NamedTuple):
    """The clamp of a set of sigmas, per device and dtype: ``scalar`` holds ``(sigmas, low, high)`` of the
    spherical ones (one bound where all share it, the scalar overload, cheaper on a CPU; else one per sigma),
    ``per_axis`` ``(sigmas, lows, highs)`` of the others, their bounds as tensors of sigma's shape."""

    scalar: List[Tuple[List[torch.Tensor], Union[float, List[float]], Union[float, List[float]]]]
    per_axis: List[Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]]


def prepare_clamps(sigmas_and_layers: List[Tuple[torch.Tensor, AdaptiveConvNd]]) -> PreparedClamps:
    scalar: Dict[Tuple[torch.device, torch.dtype], Tuple[List[torch.Tensor], List[float], List[float]]] = {}
    per_axis: Dict[Tuple[torch.device, torch.dtype], Tuple[List[torch.Tensor], List, List]] = {}
    for sigma, layer in sigmas_and_layers:
        key = (sigma.device, sigma.dtype)
        if layer.covariance_type == 'spherical':
            sigmas, lows, highs = scalar.setdefault(key, ([], [], []))
            low, high = layer.sigma_bounds
        else:
            sigmas, lows, highs = per_axis.setdefault(key, ([], [], []))
            bounds = torch.tensor(layer.sigma_bounds, dtype=sigma.dtype, device=sigma.device)
            low, high = (bound.expand_as(sigma).contiguous() for bound in bounds.unbind(1))
        sigmas.append(sigma)
        lows.append(low)
        highs.append(high)
    return PreparedClamps(
        [
            (
                sigmas,
                lows[0] if lows.count(lows[0]) == len(lows) else lows,
                highs[0] if highs.count(highs[0]) == len(highs) else highs,
            )
            for sigmas, lows, highs in scalar.values()
        ],
        list(per_axis.values()),
    )


def apply_clamps(clamps: PreparedClamps) -> None:
    """The foreach clamps of :func:`prepare_clamps`."""
    with torch.no_grad():
        for sigmas, low, high in clamps.scalar:
            torch._foreach_clamp_min_(sigmas, low)
            torch._foreach_clamp_max_(sigmas, high)
        for sigmas, lows, highs in clamps.per_axis:
            torch._foreach_maximum_(sigmas, lows)
            torch._foreach_minimum_(sigmas, highs)


def _param_groups_key(optimizer: torch.optim.Optimizer) -> Tuple:
    """What changes when an optimizer's parameters change (``add_param_group``, a new ``params`` list)."""
    return tuple((id(group['params']), len(group['params'])) for group in optimizer.param_groups)


class _SigmaClampHook:
    """The post-step hook of :func:`register_sigma_clamp`: its first call clamps every adaptive layer of
    ``model``, later ones the sigmas the optimizer updates (:func:`_clamp_optimizer_sigmas`)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._first = True

    def __call__(self, optimizer: torch.optim.Optimizer, _args, _kwargs) -> None:
        if self._first:
            self._first = False
            clamp_sigmas_(self.model)
        else:
            _clamp_optimizer_sigmas(optimizer)

    def __getstate__(self) -> Dict:
        return dict(model=self.model)

    def __setstate__(self, state: Dict) -> None:
        self.__init__(state['model'])


def register_sigma_clamp(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """Clamp the sigmas of ``model`` after every ``optimizer.step()``.

    Uses :meth:`torch.optim.Optimizer.register_step_post_hook`, so the clamp runs only when the
    optimizer really steps: a step skipped under gradient accumulation (Accelerate's
    ``AcceleratedOptimizer``) or by an AMP ``GradScaler`` after an overflow does not clamp.
    Register it on the plain optimizer, before or after ``accelerator.prepare``. The first step
    clamps every adaptive layer of ``model``; later steps clamp the sigmas the optimizer updates.

    Returns:
        A handle whose ``remove()`` detaches the hook.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f'optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}')
    # an AcceleratedOptimizer is itself an Optimizer subclass wrapping the real one
    target = getattr(optimizer, 'optimizer', optimizer)
    if not isinstance(target, torch.optim.Optimizer):
        target = optimizer
    return target.register_step_post_hook(_SigmaClampHook(model))


def param_groups(
    model: nn.Module,
    weight_decay: float = 0.0,
    lr: Optional[float] = None,
    sigma_lr_scale: float = 1.0,
    no_weight_decay_1d: bool = True,
) -> List[Dict]:
    """Optimizer parameter groups: decayed weights, undecayed rest, and sigma.

    Args:
        model: the model.
        weight_decay: weight decay of the ``decay`` group (conv/linear weights; ``W`` of adaptive
            layers, as the paper's L2 penalty is on W and not on W ∘ U).
        lr: base learning rate; needed when ``sigma_lr_scale`` is not 1.
        sigma_lr_scale: sigma's learning rate is ``lr * sigma_lr_scale``.
        no_weight_decay_1d: biases and other 1-d parameters (norm layers) get no weight decay.

    Returns:
        A list of groups (each with a ``name``) for any ``torch.optim`` optimizer; empty groups
        are left out. Sigma never gets weight decay; the ``sigma`` group also holds the angles
        ``theta`` of 'full' layers (the envelope's other parameters), at the same learning rate.
    """
    if sigma_lr_scale <= 0:
        raise ValueError(f'sigma_lr_scale must be > 0, got {sigma_lr_scale}')
    if sigma_lr_scale != 1.0 and lr is None:
        raise ValueError('param_groups needs lr to scale the sigma learning rate (sigma_lr_scale != 1)')
    sigma_ids = {id(param) for layer in adaptive_layers(model) for param in envelope_parameters(layer)}
    decay, no_decay, sigmas = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if id(param) in sigma_ids:
            sigmas.append(param)
        elif no_weight_decay_1d and (param.ndim <= 1 or name.endswith('.bias')):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        dict(name='decay', params=decay, weight_decay=weight_decay),
        dict(name='no_decay', params=no_decay, weight_decay=0.0),
        dict(name='sigma', params=sigmas, weight_decay=0.0),
    ]
    if lr is not None:
        for group in groups:
            group['lr'] = lr * (sigma_lr_scale if group['name'] == 'sigma' else 1.0)
    return [group for group in groups if group['params']]


class _ClampPlan:
    """How to clamp the sigmas an optimizer holds (:class:`PreparedClamps`), looked up once per set of
    parameter groups and kept while every owning layer holds the same sigma tensor (same device and dtype)
    and the same bounds object."""

    def __init__(self, key: Tuple, owners: List):
        self.key, self.owners = key, owners
        layers = [layer for layer in (owner() for owner in owners) if layer is not None]
        self.layers = layers
        self.sigmas = [layer._parameters.get('sigma') for layer in layers]
        self.bounds = [layer.sigma_bounds for layer in layers]
        self.placements = [(sigma.device, sigma.dtype) for sigma in self.sigmas]
        self.clamps = prepare_clamps(list(zip(self.sigmas, layers)))

    def valid_for(self, key: Tuple) -> bool:
        layers = self.layers
        return (
            key == self.key
            and all(owner() is not None for owner in self.owners)
            and all(map(operator.is_, [layer._parameters.get('sigma') for layer in layers], self.sigmas))
            and all(map(operator.is_, [layer.sigma_bounds for layer in layers], self.bounds))
            and [(sigma.device, sigma.dtype) for sigma in self.sigmas] == self.placements
        )


# optimizer -> its clamp plan
_OPTIMIZER_LAYERS: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _clamp_optimizer_sigmas(optimizer: torch.optim.Optimizer) -> None:
    """Clamp the sigmas ``optimizer`` holds; which layers they belong to is looked up once per set of
    parameter groups (through :data:`~timm_aconv.layers.adaptive_conv.SIGMA_OWNERS`), not per step."""
    key = _param_groups_key(optimizer)
    plan = _OPTIMIZER_LAYERS.get(optimizer)
    if plan is None or not plan.valid_for(key):
        owners = (SIGMA_OWNERS.get(param) for group in optimizer.param_groups for param in group['params'])
        plan = _OPTIMIZER_LAYERS[optimizer] = _ClampPlan(key, [owner for owner in owners if owner is not None])
    if plan.layers:
        apply_clamps(plan.clamps)


class _AutoClamp:
    """The post-step hook of every torch optimizer: :func:`_clamp_optimizer_sigmas`, unless turned off
    or left to a :func:`register_sigma_clamp` hook on the optimizer."""

    enabled = True

    @classmethod
    def hook(cls, optimizer: torch.optim.Optimizer, _args, _kwargs) -> None:
        if cls.enabled and not any(
            isinstance(hook, _SigmaClampHook) for hook in getattr(optimizer, '_optimizer_step_post_hooks', {}).values()
        ):
            _clamp_optimizer_sigmas(optimizer)


register_optimizer_step_post_hook(_AutoClamp.hook)


def set_auto_sigma_clamp(enabled: bool) -> bool:
    """Turn the clamp after every optimizer step (on by default) on or off; returns the previous setting.

    On, every ``torch.optim.Optimizer`` that holds the sigma of an adaptive layer clamps it into the layer's
    bounds after each step it really takes (not after a step an AMP ``GradScaler`` skips, nor after an
    Accelerate gradient-accumulation micro-step), in any training loop (timm's ``train.py``, Lightning,
    your own). An optimizer with a :func:`register_sigma_clamp` hook is left to that hook.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f'enabled must be True or False, got {enabled!r}')
    previous, _AutoClamp.enabled = _AutoClamp.enabled, enabled
    return previous
