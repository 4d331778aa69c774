"""The paper's simple CNN, with adaptive (ACONV) or ordinary (CONV) k×k convolutions

Paper: `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.),
section 4.2 and Table 1: two convolutions of 32 filters (k×k, 'same' padding, no bias), each
followed by BN and ReLU, 2×2 max-pooling, dropout, a dense layer of 256 units with BN and
ReLU, dropout, and a linear classifier.

The dense layer sees the flattened pooled feature map, so its size follows the input size
given by ``img_size`` (default 28, MNIST; e.g. 8 for sklearn digits, 32 for CIFAR-10, 60 for
MNIST-cluttered)::

    >>> model = timm.create_model('aconv_simple_cnn', img_size=8, in_chans=1, num_classes=10)

The defaults are PyTorch's BatchNorm constants and He / Glorot initializers. The authors' network
was Keras; its constants are kwargs (the paper configs set them)::

    >>> timm.create_model('conv_simple_cnn', bn_momentum=0.01, bn_eps=1e-3, weight_init='keras')
"""

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..layers.adaptive_conv import AdaptiveConv2d
from ..layers.covariance import SigmaInit
from ._conv_layer import create_conv_layer
from ._timm_internals import feature_take_indices

__all__ = ['MNIST_MEAN', 'MNIST_STD', 'WEIGHT_INITS', 'SimpleCnn']

HEAD_POOLS = ('flatten', '')
WEIGHT_INITS = ('default', 'keras')
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


def _image_size(img_size: Union[int, Tuple[int, int]]) -> Tuple[int, int]:
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 2 for s in size):
        raise ValueError(f'img_size must be an int or (height, width) of ints >= 2, got {img_size!r}')
    return size


def _check_global_pool(global_pool: str, num_classes: int) -> str:
    if global_pool not in HEAD_POOLS:
        raise ValueError(f'global_pool must be one of {HEAD_POOLS}, got {global_pool!r}')
    if global_pool == '' and num_classes:
        raise ValueError("global_pool='' keeps the unpooled feature map, which needs num_classes=0")
    return global_pool


class SimpleCnn(nn.Module):
    """conv-BN-ReLU ×2, max-pool 2, dropout, dense 256-BN-ReLU, dropout, linear.

    Args:
        num_classes: classifier outputs (0: the head ends at the 256 pre-logits).
        in_chans: input channels.
        img_size: input (height, width) or one side; sizes the dense layer.
        kernel_size: n of both k×k convolutions, odd >= 3 (the paper uses 3, 5, 7, 9).
        adaptive: :class:`~timm_aconv.AdaptiveConv2d` (True) or ``nn.Conv2d`` (False) layers.
        sigma_init: initial apertures of the adaptive layers, spread over each layer's filters.
        sigma_bounds: clamp range of sigma, None for the paper's (1/n, n).
        covariance_type: the envelope of the adaptive layers: 'spherical' (default, the paper's), 'diag' or
            'full' (:mod:`timm_aconv.layers.covariance`).
        width: filters of each convolution.
        hidden_size: units of the dense layer.
        drop_rate: both dropouts.
        global_pool: 'flatten' (the dense layer pools the feature map) or '' (with ``num_classes=0``:
            no head, the model returns the unpooled feature map), as timm's ``global_pool``.
        bn_momentum: BatchNorm momentum, PyTorch's convention (Keras' ``momentum=0.99`` is 0.01).
        bn_eps: BatchNorm epsilon (Keras' default 1e-3).
        weight_init: 'default' (He-uniform convolutions, Glorot-uniform dense layers) or 'keras',
            the authors' code: adaptive convolutions He-uniform (their layer), ordinary ones
            Glorot-uniform (Keras' ``Conv2D`` default), dense layers He-uniform.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: Union[int, Tuple[int, int]] = 28,
        kernel_size: int = 7,
        adaptive: bool = True,
        sigma_init: SigmaInit = (0.1, 0.5),
        sigma_bounds: Optional[Tuple[float, float]] = None,
        covariance_type: str = 'spherical',
        width: int = 32,
        hidden_size: int = 256,
        drop_rate: float = 0.5,
        global_pool: str = 'flatten',
        bn_momentum: float = 0.1,
        bn_eps: float = 1e-5,
        weight_init: str = 'default',
    ):
        super().__init__()
        height, width_px = _image_size(img_size)
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f'drop_rate must be in [0, 1), got {drop_rate!r}')
        if weight_init not in WEIGHT_INITS:
            raise ValueError(f'weight_init must be one of {WEIGHT_INITS}, got {weight_init!r}')
        if not 0.0 < bn_momentum <= 1.0 or bn_eps <= 0.0:
            raise ValueError(f'bn_momentum must be in (0, 1] and bn_eps > 0, got {bn_momentum!r}, {bn_eps!r}')
        norm_kwargs = dict(momentum=bn_momentum, eps=bn_eps)
        conv_layer = create_conv_layer(
            adaptive, kernel_size, sigma_init=sigma_init, sigma_bounds=sigma_bounds, covariance_type=covariance_type
        )
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        self.conv1 = conv_layer(in_chans, width)
        self.bn1 = nn.BatchNorm2d(width, **norm_kwargs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = conv_layer(width, width)
        self.bn2 = nn.BatchNorm2d(width, **norm_kwargs)
        self.act2 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.num_features = width
        self.feature_info = [
            dict(num_chs=width, reduction=1, module='act1'),
            dict(num_chs=width, reduction=1, module='act2'),
            dict(num_chs=width, reduction=2, module='pool'),
        ]

        self.global_pool = _check_global_pool(global_pool, num_classes)
        self.flatten = nn.Flatten(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc1 = nn.Linear(width * (height // 2) * (width_px // 2), hidden_size)
        self.bn3 = nn.BatchNorm1d(hidden_size, **norm_kwargs)
        self.act3 = nn.ReLU(inplace=True)
        self.pre_logits_drop = nn.Dropout(drop_rate)
        self.head_hidden_size = hidden_size
        self.fc = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.weight_init = weight_init
        self.init_weights()

    @torch.jit.ignore
    def init_weights(self) -> None:
        """``weight_init='default'``: He-uniform convolutions, Glorot-uniform dense layers;
        ``'keras'`` (the authors' code): adaptive convolutions He-uniform, ordinary ones
        Glorot-uniform, dense layers He-uniform. Biases zero."""
        keras = self.weight_init == 'keras'
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if keras and not isinstance(module, AdaptiveConv2d):
                    nn.init.xavier_uniform_(module.weight)
                else:
                    nn.init.kaiming_uniform_(module.weight, mode='fan_in', nonlinearity='relu')
            elif isinstance(module, nn.Linear):
                if keras:
                    nn.init.kaiming_uniform_(module.weight, mode='fan_in', nonlinearity='relu')
                else:
                    nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        return 'fc' if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new linear classifier (``num_classes=0``: none).

        The dense layer is this network's pooling: ``global_pool=''`` removes it as well (with
        ``num_classes=0``), so the model returns the unpooled feature map; 'flatten' restores it.
        """
        if global_pool is not None:
            self.global_pool = _check_global_pool(global_pool, num_classes)
        self.num_classes = num_classes
        weight = self.fc1.weight
        self.fc = (
            nn.Linear(self.head_hidden_size, num_classes, device=weight.device, dtype=weight.dtype)
            if num_classes > 0
            else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.pool(x)

    def _feature_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """The part of :meth:`forward_features` that produces ``feature_info[index]``."""
        if index == 0:
            return self.act1(self.bn1(self.conv1(x)))
        if index == 1:
            return self.act2(self.bn2(self.conv2(x)))
        return self.pool(x)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The features of ``feature_info`` (each conv block, the pooling); arguments as timm's
        ``forward_intermediates`` (``norm`` is unused: there is no final norm layer)."""
        assert output_fmt == 'NCHW', 'Output format must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        for index in range(len(self.feature_info)):
            if stop_early and index > max_index:
                break
            x = self._feature_block(index, x)
            if index in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '':
            return x
        x = self.head_drop(self.flatten(x))
        x = self.act3(self.bn3(self.fc1(x)))
        x = self.pre_logits_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_simple_cnn(variant: str, pretrained: bool = False, **kwargs) -> SimpleCnn:
    feature_cfg = {'out_indices': (0, 1, 2), **(kwargs.pop('feature_cfg', None) or {})}
    return build_model_with_cfg(SimpleCnn, variant, pretrained, feature_cfg=feature_cfg, **kwargs)


def _cfg(**kwargs) -> Dict[str, Any]:
    return {
        'url': '',
        'num_classes': 10,
        'input_size': (1, 28, 28),
        'pool_size': (14, 14),
        'fixed_input_size': True,
        'crop_pct': 1.0,
        'interpolation': 'bilinear',
        'mean': MNIST_MEAN,
        'std': MNIST_STD,
        'first_conv': 'conv1',
        'classifier': 'fc',
        'paper_ids': 'arXiv:2009.06385',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({'aconv_simple_cnn': _cfg(), 'conv_simple_cnn': _cfg()})


@register_model
def aconv_simple_cnn(pretrained: bool = False, **kwargs) -> SimpleCnn:
    """The paper's simple CNN with adaptive k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(adaptive=True)
    return _create_simple_cnn('aconv_simple_cnn', pretrained, **dict(model_args, **kwargs))


@register_model
def conv_simple_cnn(pretrained: bool = False, **kwargs) -> SimpleCnn:
    """The paper's simple CNN with ordinary k×k convolutions (k = ``kernel_size``, default 7)"""
    model_args = dict(adaptive=False)
    return _create_simple_cnn('conv_simple_cnn', pretrained, **dict(model_args, **kwargs))
