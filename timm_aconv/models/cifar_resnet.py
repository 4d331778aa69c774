"""CIFAR ResNets with adaptive (ACONV) or ordinary (CONV) k×k convolutions

Papers:
* `Deep Residual Learning for Image Recognition` (He et al., 2015), section 4.2: the 6n+2-layer
  CIFAR ResNets (a stem convolution, three stages of n basic blocks with 16/32/64 filters,
  global average pooling, a linear classifier).
* `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.), section 4.3,
  as its code builds them (``resnet_s.py``): every convolution, the stem's and both of each
  block's, has the one ``kernel_size`` and is adaptive; a stage changes shape through a
  parameter-free type-A shortcut that subsamples by 2 and repeats the channels; dropout
  (``drop_rate``) follows each stage and the global pooling; convolutions carry no bias and
  start from He-normal weights.

``aconv_resnet*`` and ``conv_resnet*`` are twins: the same architecture and ``kernel_size``,
with :class:`~timm_aconv.AdaptiveConv2d` or ``nn.Conv2d`` (the adaptive twin has one more
parameter, sigma, per filter), so a CONV k×k vs ACONV k×k comparison is one model name apart::

    >>> import timm, timm_aconv
    >>> model = timm.create_model('aconv_resnet20', kernel_size=7, num_classes=10)
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from ..layers.covariance import SigmaInit
from ._conv_layer import ConvLayer, create_conv_layer
from ._timm_internals import feature_take_indices

__all__ = ['CIFAR10_MEAN', 'CIFAR10_STD', 'ChannelRepeatShortcut', 'CifarBasicBlock', 'CifarResNet']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
SHORTCUTS = ('A', 'B')


class ChannelRepeatShortcut(nn.Module):
    """Parameter-free type-A shortcut of the paper's code: subsample by ``stride``, repeat the channels.

    He et al.'s option A pads the new channels with zeros; the adaptive-kernel authors' code
    concatenates the subsampled input with itself instead, which this module reproduces.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        if out_chs % in_chs:
            raise ValueError(
                f"shortcut='A' repeats the input channels, so out channels ({out_chs}) must be a multiple of "
                f"in channels ({in_chs}); use shortcut='B' (1x1 projection)"
            )
        self.stride = stride
        self.repeats = out_chs // in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return x.repeat(1, self.repeats, 1, 1)

    def extra_repr(self) -> str:
        return f'stride={self.stride}, repeats={self.repeats}'


def _create_shortcut(shortcut: str, in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    if shortcut == 'A':
        return ChannelRepeatShortcut(in_chs, out_chs, stride)
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


class CifarBasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU (ResNet v1), both convs from ``conv_layer``"""

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv_layer: ConvLayer, shortcut: str = 'A'):
        super().__init__()
        self.conv1 = conv_layer(in_chs, out_chs, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv_layer(out_chs, out_chs)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.shortcut = _create_shortcut(shortcut, in_chs, out_chs, stride)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n+2 layers) with one k×k size for every convolution.

    Args:
        depth: 6n + 2 layers (8, 14, 20, 32, 44, 56, 110, ...), n blocks per stage.
        num_classes: classifier outputs (0: no classifier).
        in_chans: input channels.
        kernel_size: n of every k×k convolution, odd >= 3 (the paper uses 3, 5, 7, 9).
        adaptive: :class:`~timm_aconv.AdaptiveConv2d` (True) or ``nn.Conv2d`` (False) layers.
        sigma_init: initial apertures of the adaptive layers, one value or a (low, high) range
            spread over each layer's filters (the authors' code: 0.15).
        sigma_bounds: clamp range of sigma, None for the paper's (1/n, n).
        covariance_type: the envelope of the adaptive layers: 'spherical' (default, the paper's), 'diag' or
            'full' (:mod:`timm_aconv.layers.covariance`).
        shortcut: 'A' (parameter-free: subsample + repeat channels) or 'B' (1×1 projection + BN)
            where a stage changes shape.
        widths: filters of the three stages.
        drop_rate: dropout after each stage and after the global pooling, as the authors' code.
        global_pool: timm pooling type ('avg', 'max', ..., '' for none).
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        kernel_size: int = 7,
        adaptive: bool = True,
        sigma_init: SigmaInit = 0.15,
        sigma_bounds: Optional[Tuple[float, float]] = None,
        covariance_type: str = 'spherical',
        shortcut: str = 'A',
        widths: Tuple[int, ...] = (16, 32, 64),
        drop_rate: float = 0.0,
        global_pool: str = 'avg',
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f'depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth!r}')
        if shortcut not in SHORTCUTS:
            raise ValueError(f'shortcut must be one of {SHORTCUTS}, got {shortcut!r}')
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate!r}')
        conv_layer = create_conv_layer(
            adaptive, kernel_size, sigma_init=sigma_init, sigma_bounds=sigma_bounds, covariance_type=covariance_type
        )
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = conv_layer(in_chans, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module='act1')]

        stages, in_chs, reduction = [], widths[0], 1
        for stage_idx, out_chs in enumerate(widths):
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks: List[nn.Module] = [
                CifarBasicBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1, conv_layer, shortcut)
                for i in range(blocks_per_stage)
            ]
            if drop_rate:
                blocks.append(nn.Dropout(drop_rate))
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f'stages.{stage_idx}'))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = in_chs
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """He-normal convolutions and classifier (fan-in, as Keras' he_normal), unit BN, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode='fan_in', nonlinearity='relu')
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^conv1|bn1', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        weight = self.conv1.weight
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.fc.to(device=weight.device, dtype=weight.dtype)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem (index 0) and of each stage (1..3), as timm models return them.

        Args:
            x: input images.
            indices: the last n features if an int, these indices if a list, all if None.
            norm: unused (no final norm layer), for timm API compatibility.
            stop_early: stop after the last wanted feature.
            output_fmt: 'NCHW' only.
            intermediates_only: return only the intermediates.
        """
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for stage_idx, stage in enumerate(stages):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if stage_idx + 1 in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last feature of ``indices`` (and the head); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        self.stages = self.stages[:max_index]
        if max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    # a caller's feature_cfg (e.g. feature_cls='fx') refines these defaults
    feature_cfg = {'out_indices': (0, 1, 2, 3), 'flatten_sequential': True, **(kwargs.pop('feature_cfg', None) or {})}
    return build_model_with_cfg(CifarResNet, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '',
        'num_classes': 10,
        'input_size': (3, 32, 32),
        'pool_size': (8, 8),
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'mean': CIFAR10_MEAN,
        'std': CIFAR10_STD,
        'first_conv': 'conv1',
        'classifier': 'fc',
        'paper_ids': 'arXiv:1512.03385,arXiv:2009.06385',
        **kwargs,
    }


# 8 and 14 layers (1 and 2 blocks per stage): the paper's MNIST / MNIST-cluttered and Fashion / Faces ResNets
DEPTHS = (8, 14, 20, 32, 44, 56, 110)
default_cfgs = generate_default_cfgs(
    {f'{prefix}_resnet{depth}': _cfg() for prefix in ('aconv', 'conv') for depth in DEPTHS}
)


@register_model
def aconv_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-8 (CIFAR), adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=8, adaptive=True)
    return _create_cifar_resnet('aconv_resnet8', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-14 (CIFAR), adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=14, adaptive=True)
    return _create_cifar_resnet('aconv_resnet14', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 (CIFAR), adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=20, adaptive=True)
    return _create_cifar_resnet('aconv_resnet20', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 (CIFAR), adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=32, adaptive=True)
    return _create_cifar_resnet('aconv_resnet32', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 (CIFAR), adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=44, adaptive=True)
    return _create_cifar_resnet('aconv_resnet44', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 (CIFAR), adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=56, adaptive=True)
    return _create_cifar_resnet('aconv_resnet56', pretrained, **dict(model_args, **kwargs))


@register_model
def aconv_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 (CIFAR), adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=110, adaptive=True)
    return _create_cifar_resnet('aconv_resnet110', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_resnet8(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-8 (CIFAR), ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=8, adaptive=False)
    return _create_cifar_resnet('conv_resnet8', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_resnet14(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-14 (CIFAR), ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=14, adaptive=False)
    return _create_cifar_resnet('conv_resnet14', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-20 (CIFAR), ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=20, adaptive=False)
    return _create_cifar_resnet('conv_resnet20', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_resnet32(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-32 (CIFAR), ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=32, adaptive=False)
    return _create_cifar_resnet('conv_resnet32', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_resnet44(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-44 (CIFAR), ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=44, adaptive=False)
    return _create_cifar_resnet('conv_resnet44', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-56 (CIFAR), ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=56, adaptive=False)
    return _create_cifar_resnet('conv_resnet56', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_resnet110(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet-110 (CIFAR), ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(depth=110, adaptive=False)
    return _create_cifar_resnet('conv_resnet110', pretrained, **dict(model_args, **kwargs))
