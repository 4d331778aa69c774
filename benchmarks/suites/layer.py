"""The layer suite: one convolution, adaptive vs ``nn.Conv2d`` of the same size n in {3, 5, 7, 9}, on the shapes
of a CIFAR ResNet's three stages: training forward (envelope recomputed), forward + backward, and eval forward."""

import copy
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

import timm_aconv
from benchmarks import report
from benchmarks.timing import Measure

LAYER_SHAPES = [  # (batch, channels, image size): the three stages of a CIFAR ResNet20 at batch 64
    (64, 16, 32),
    (64, 32, 16),
    (64, 64, 8),
]
LAYER_SIZES = (3, 5, 7, 9)


def _layer_pair(channels: int, n: int) -> Tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ordinary = nn.Conv2d(channels, channels, n, padding=n // 2, bias=False)
    adaptive = timm_aconv.convert_conv(copy.deepcopy(ordinary), n, preserve=False)
    return adaptive, ordinary


def _zero_grads(module: nn.Module) -> None:
    for param in module.parameters():
        param.grad = None


def layer_cases(measure: Measure) -> List[Dict]:
    results = []
    for batch, channels, size in LAYER_SHAPES:
        x = torch.randn(batch, channels, size, size)
        x_grad = x.clone().requires_grad_(True)
        for n in LAYER_SIZES:
            adaptive, ordinary = _layer_pair(channels, n)
            grad_out = torch.randn(batch, channels, size, size)

            def train_forward(conv: nn.Module, x_grad=x_grad) -> Callable[[], torch.Tensor]:
                return lambda: conv(x_grad)

            def forward_backward(conv: nn.Module, x_grad=x_grad, grad_out=grad_out) -> Callable[[], None]:
                def step():
                    _zero_grads(conv)
                    x_grad.grad = None
                    conv(x_grad).backward(grad_out)

                return step

            def eval_forward(conv: nn.Module, x=x) -> Callable[[], torch.Tensor]:
                def step():
                    with torch.no_grad():
                        return conv(x)

                return step

            for mode, make in (('train fwd', train_forward), ('fwd+bwd', forward_backward), ('eval fwd', eval_forward)):
                comparison = measure(make(adaptive), make(ordinary))
                results.append(report.row('layer', f'{batch}x{channels}x{size}x{size} n={n} {mode}', comparison))
    return results
