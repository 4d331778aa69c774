"""What the suites time: training steps and eval forwards, and the adaptive / ordinary model pairs they run."""

from typing import Callable, Optional, Tuple

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_aconv

MODEL_KERNEL_SIZE = 7  # the grid of the model pairs (the paper's ResNets)
# the tiny twins of the host-bound regime: widths and grid so small that the arithmetic vanishes
TINY_WIDTHS = (2, 4, 8)
TINY_KERNEL_SIZE = 3


def resnet20_pair(kernel_size: int = MODEL_KERNEL_SIZE) -> Tuple[nn.Module, nn.Module]:
    """``aconv_resnet20`` and ``conv_resnet20`` with the same kernel size (and seed)."""
    torch.manual_seed(0)
    adaptive = timm.create_model('aconv_resnet20', kernel_size=kernel_size)
    torch.manual_seed(0)
    ordinary = timm.create_model('conv_resnet20', kernel_size=kernel_size)
    return adaptive, ordinary


def tiny_resnet(kind: str, depth: int, **kwargs) -> nn.Module:
    """``<kind>_resnet<depth>`` (kind 'aconv' or 'conv') with the tiny widths :data:`TINY_WIDTHS` and grid
    :data:`TINY_KERNEL_SIZE`, built from seed 0; ``kwargs`` go to ``timm.create_model``."""
    torch.manual_seed(0)
    return timm.create_model(f'{kind}_resnet{depth}', kernel_size=TINY_KERNEL_SIZE, widths=TINY_WIDTHS, **kwargs)


def tiny_resnet_pair(depth: int) -> Tuple[nn.Module, nn.Module]:
    """``aconv_resnet<depth>`` and ``conv_resnet<depth>`` with the tiny widths (:func:`tiny_resnet`)."""
    return tiny_resnet('aconv', depth), tiny_resnet('conv', depth)


def train_step_fn(
    model: nn.Module,
    batch: int,
    size: int,
    device: str = 'cpu',
    foreach: Optional[bool] = None,
    forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    after_backward: Callable[[], None] = lambda: None,
) -> Callable[[], None]:
    """One full training step as the recipes do it: forward, backward, SGD step, sigma clamp.

    ``foreach``: SGD's multi-tensor implementation (torch's default: on CUDA only); ``forward``:
    what computes the outputs (e.g. the compiled model), default ``model``; ``after_backward``: called
    between the backward and the optimizer step.
    """
    model.train()
    optimizer = torch.optim.SGD(
        timm_aconv.param_groups(model, weight_decay=1e-4), lr=0.01, momentum=0.9, foreach=foreach
    )
    timm_aconv.register_sigma_clamp(optimizer, model)  # a no-op hook for a model without adaptive layers
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device)
    target = torch.randint(0, getattr(model, 'num_classes', 10), (batch,), generator=generator).to(device)
    forward = model if forward is None else forward

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(x), target).backward()
        after_backward()
        optimizer.step()

    return step


def eval_forward_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """The eval-mode forward of ``model`` on ``x``, without gradients."""
    model.eval()

    def forward():
        with torch.no_grad():
            return model(x)

    return forward


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    """``|output - reference| / |reference|`` (Frobenius norms): how far a fused or exported form drifts."""
    return float((output - reference).norm() / reference.norm())
