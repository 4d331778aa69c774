"""In-place replacement of modules anywhere in a module tree"""

from typing import Dict

import torch.nn as nn

from ..layers.kernel_group import group_adaptive_layers

__all__ = ['replace_modules']


def replace_modules(model: nn.Module, replacements: Dict[nn.Module, nn.Module]) -> nn.Module:
    """Swap every occurrence of each key module for its value, in place.

    A module registered under several names (shared) is replaced under all of them by the
    same new module. The adaptive layers of the result are grouped anew
    (:func:`~timm_aconv.layers.kernel_group.group_adaptive_layers`). Returns ``model``, or its
    replacement when ``model`` itself is a key.
    """
    if model in replacements:
        model = replacements[model]
    else:
        for parent in model.modules():
            # _modules, not named_children(): the latter skips a child registered under a second name
            for child_name, child in list(parent._modules.items()):
                if child is not None and child in replacements:
                    setattr(parent, child_name, replacements[child])
    group_adaptive_layers(model)
    return model
