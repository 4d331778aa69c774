"""Reload an SMP model made adaptive with ``convert_convs`` and saved with SMP's ``save_pretrained``

SMP's ``save_pretrained`` records the model's constructor arguments, not a conversion made after it,
so ``smp.from_pretrained`` rebuilds the plain model and cannot load the ``sigma`` entries.
:func:`from_pretrained` rebuilds that plain model, converts the layers the checkpoint holds as adaptive
(:func:`~timm_aconv.surgery.convert_like`) and loads every weight strictly::

    >>> model = timm_aconv.smp.from_pretrained('runs/unet_converted')   # a folder or a Hub repository
"""

import os
import warnings
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import segmentation_models_pytorch as smp
import torch.nn as nn
from safetensors.torch import load_file

from ..surgery import convert_like

__all__ = ['from_pretrained']

WEIGHTS_NAME = 'model.safetensors'  # what SMP's save_pretrained writes (huggingface_hub's mixin)


def from_pretrained(
    pretrained_model_name_or_path: Union[str, Path],
    sigma_bounds: Optional[Tuple[float, float]] = None,
    **kwargs: Any,
) -> nn.Module:
    """``smp.from_pretrained`` for a model whose layers were converted after it was built.

    Args:
        pretrained_model_name_or_path: a folder written by ``save_pretrained``, or a Hub repository id.
        sigma_bounds: the clamp range of the converted layers (a checkpoint holds none); None for the
            paper's (1/n, n).
        **kwargs: passed to ``smp.from_pretrained`` (``revision``, ``cache_dir``, ``token``, ...).

    Returns:
        The model with the saved weights, sigmas included, in evaluation mode as SMP returns it.
    """
    state_dict = load_file(_weights_file(str(pretrained_model_name_or_path), **kwargs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = smp.from_pretrained(pretrained_model_name_or_path, strict=False, **kwargs)
    for warning in caught:  # all but SMP's "Mismatched keys: you should TRAIN": the strict load below fills them
        if 'Mismatched keys' not in str(warning.message):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    model = convert_like(model, state_dict, sigma_bounds=sigma_bounds)
    model.load_state_dict(state_dict)
    return model


def _weights_file(name_or_path: str, **kwargs: Any) -> str:
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, WEIGHTS_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"from_pretrained: no {WEIGHTS_NAME} in '{name_or_path}' (written by save_pretrained)"
            )
        return path
    from huggingface_hub import hf_hub_download

    hub_args = {
        key: kwargs[key]
        for key in ('revision', 'cache_dir', 'token', 'force_download', 'local_files_only')
        if key in kwargs
    }
    return hf_hub_download(repo_id=name_or_path, filename=WEIGHTS_NAME, **hub_args)
