""" The envelopes of all adaptive layers of a model, computed in one batched call per forward

Each :class:`~timm_aconv.layers.adaptive_conv.AdaptiveConv2d` computes its envelope and the
envelope's derivative in sigma in about eleven small operations per training step; on a GPU in
eager mode every one is a kernel launch. :func:`register_batched_envelopes` computes them for all
layers that share a grid size, dtype and device in one batched call before the model's forward,
so that each layer adds only its product ``W ∘ U`` and that product's gradient. The results are
the same to the bit; a layer whose sigma changed since (an optimizer step, an in-place edit, a
swapped tensor) or that runs outside the model's forward computes its own. Nothing is batched
under ``torch.compile`` (which fuses the small operations itself), without autograd, or for
layers whose sigma needs no gradient.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from .adaptive_conv import AdaptiveConv2d, batched_envelope_key
from .envelope import envelope_and_log_derivative

__all__ = ['register_batched_envelopes']


def _batch_envelopes(model: nn.Module, _args) -> None:
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return
    groups: Dict[Tuple[int, torch.dtype, torch.device], List[AdaptiveConv2d]] = {}
    for module in model.modules():
        if isinstance(module, AdaptiveConv2d) and module.sigma.requires_grad:
            groups.setdefault((module.grid_size, module.weight.dtype, module.weight.device), []).append(module)
    for (_size, dtype, _device), layers in groups.items():
        keys = [batched_envelope_key(layer.sigma, layer.weight) for layer in layers]
        if any(key is None for key in keys):  # sigma without storage (torch.func transforms): per layer
            continue
        sigmas = torch.cat([layer.sigma.detach() for layer in layers]).to(dtype)
        envelopes, log_derivatives = envelope_and_log_derivative(sigmas, layers[0].sq_distance.to(dtype))
        sizes = [layer.out_channels for layer in layers]
        for layer, key, envelope, log_derivative in zip(
                layers, keys, envelopes.split(sizes), log_derivatives.split(sizes)):
            layer._batched_envelope = (layer.sigma, key, envelope, log_derivative)


def register_batched_envelopes(model: nn.Module) -> RemovableHandle:
    """ Compute the envelopes of all adaptive layers of ``model`` in one call per grid size before
    each forward of ``model`` that records gradients (a forward pre-hook).

    Takes the layers present at each forward (also layers converted after registering). Remove the
    hook (``handle.remove()``) before ``torch.jit.script``, which cannot compile Python hooks.

    Returns:
        A handle whose ``remove()`` detaches the hook.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    return model.register_forward_pre_hook(_batch_envelopes)
