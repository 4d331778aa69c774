"""timm registrations: importing this package registers the models with timm

- :mod:`.cifar_resnet`: ``aconv_resnet8|14|20|32|44|56|110`` and their ``conv_resnet*`` twins, the
  paper's CIFAR ResNets (every convolution k×k, adaptive or ordinary).
- :mod:`.adaptive_resnet`: ``aconv_resnet18|34|50|101|152``, timm's ImageNet ResNets with
  adaptive spatial convolutions; ``pretrained=True`` converts timm's weights exactly.
- :mod:`.simple_cnn`: ``aconv_simple_cnn`` / ``conv_simple_cnn``, the paper's simple CNN.
- :mod:`.converted`: ``aconv_converted``, any timm model with ``convert_convs`` applied (how a
  converted model saved with timm's ``save_for_hf`` comes back with ``timm.create_model``).
"""

from timm.models import register_notrace_module

from ..layers.adaptive_conv import AdaptiveConv1d, AdaptiveConv2d, AdaptiveConv3d
from .adaptive_resnet import adaptive_resnet, convert_pretrained_resnet
from .cifar_resnet import CIFAR10_MEAN, CIFAR10_STD, ChannelRepeatShortcut, CifarBasicBlock, CifarResNet
from .converted import converted_model, converted_model_args
from .simple_cnn import MNIST_MEAN, MNIST_STD, SimpleCnn

__all__ = [
    'CIFAR10_MEAN',
    'CIFAR10_STD',
    'MNIST_MEAN',
    'MNIST_STD',
    'ChannelRepeatShortcut',
    'CifarBasicBlock',
    'CifarResNet',
    'SimpleCnn',
    'adaptive_resnet',
    'convert_pretrained_resnet',
    'converted_model',
    'converted_model_args',
]

# FX feature extraction (features_only with feature_cls='fx', timm's fx tests) calls adaptive
# layers as leaves, so their forward (the kernels of their group) runs unchanged
for _layer in (AdaptiveConv1d, AdaptiveConv2d, AdaptiveConv3d):
    register_notrace_module(_layer)
