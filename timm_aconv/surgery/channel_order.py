"""Moving a layer's output-channel permutation into the layers that read its output

A layer whose output channels come out in a permuted order (the concatenated size buckets of
:class:`~timm_aconv.layers.mixed_size_conv.MixedSizeConv`) can leave them that way when
everything between it and the next channel-mixing layer treats channels independently: the
permutation is then applied once, at export, to those modules' per-channel parameters and to the
next layer's input channels, and no gather runs at inference.

:func:`find_permutable_chains` finds such chains with :mod:`torch.fx`:
``conv → [BatchNorm2d] → [element-wise ops, pooling, dropout] → Conv2d (groups=1)`` or
``… → flatten → Linear``, where every intermediate value has exactly one user and every module
is called once. Anything else (a residual add, a concatenation, a feature returned by
``forward_intermediates`` (a module named in ``feature_info``), a model FX cannot trace) is left
alone, and the caller restores the order with a gather instead.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from timm.models import get_notrace_functions, get_notrace_modules  # timm >= 1.0.16 exports them here

from ..layers.adaptive_conv import AdaptiveConvNd

__all__ = ['PermutableChain', 'find_permutable_chains', 'permute_chain_']

PER_CHANNEL_NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm, BatchNormAct2d)
ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
ELEMENTWISE_FUNCTIONS = (
    F.relu,
    torch.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    torch.sigmoid,
    torch.tanh,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
)
ELEMENTWISE_METHODS = ('relu', 'relu_', 'sigmoid', 'sigmoid_', 'tanh', 'tanh_', 'contiguous')


@dataclass
class PermutableChain:
    """The modules between a producer and the layer that mixes its channels next."""

    producer: str
    norms: List[str]  # per-channel normalization modules to permute
    consumer: str  # a Conv2d (groups=1) or a Linear after a flatten
    flattened: bool  # the consumer is a Linear reading (channels × pixels) features
    passed: List[str]  # every module called between producer and consumer


class _Tracer(torch.fx.Tracer):
    """Convolutions, norms and timm's no-trace modules stay leaves (calls to be recognized, not traced)."""

    def __init__(self):
        super().__init__(autowrap_functions=tuple(get_notrace_functions()))
        self._notrace = tuple(get_notrace_modules())

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        return isinstance(
            module, (nn.Conv2d, nn.modules.batchnorm._BatchNorm, *self._notrace)
        ) or super().is_leaf_module(module, qualname)


def _only_user(node: torch.fx.Node) -> Optional[torch.fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _single_tensor_input(node: torch.fx.Node, value: torch.fx.Node) -> bool:
    """``value`` is the node's first argument and no other argument is a graph value."""
    others = list(node.args[1:]) + list(node.kwargs.values())
    return bool(node.args) and node.args[0] is value and not any(isinstance(arg, torch.fx.Node) for arg in others)


def _is_flatten(node: torch.fx.Node, modules: Dict[str, nn.Module]) -> bool:
    if node.op == 'call_module':
        module = modules[node.target]
        return type(module) is nn.Flatten and module.start_dim == 1 and module.end_dim == -1
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get('start_dim', 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get('end_dim', -1)
    is_call = (node.op == 'call_function' and node.target is torch.flatten) or (
        node.op == 'call_method' and node.target == 'flatten'
    )
    return is_call and start == 1 and end == -1


def _follow(producer: torch.fx.Node, modules: Dict[str, nn.Module], calls: Dict[int, int]) -> Optional[PermutableChain]:
    norms: List[str] = []
    passed: List[str] = []
    node = producer
    while True:
        user = _only_user(node)
        if user is None or not (
            user.op in ('call_module', 'call_function', 'call_method') and _single_tensor_input(user, node)
        ):
            return None
        if user.op == 'call_module':
            if calls[id(modules[user.target])] != 1:
                return None
            module = modules[user.target]
            if type(module) is nn.Conv2d or isinstance(module, AdaptiveConvNd):
                return (
                    PermutableChain(producer.target, norms, user.target, False, passed) if module.groups == 1 else None
                )
            passed.append(user.target)
            if type(module) in PER_CHANNEL_NORMS:
                norms.append(user.target)
            elif type(module) not in ELEMENTWISE_MODULES and not _is_flatten(user, modules):
                return None
        elif (
            user.op == 'call_function' and user.target not in ELEMENTWISE_FUNCTIONS and not _is_flatten(user, modules)
        ) or (user.op == 'call_method' and user.target not in ELEMENTWISE_METHODS and not _is_flatten(user, modules)):
            return None
        if _is_flatten(user, modules):
            linear = _only_user(user)
            if (
                linear is not None
                and linear.op == 'call_module'
                and type(modules[linear.target]) is nn.Linear
                and calls[id(modules[linear.target])] == 1
                and _single_tensor_input(linear, user)
            ):
                return PermutableChain(producer.target, norms, linear.target, True, passed)
            return None
        node = user


def _feature_modules(model: nn.Module) -> set:
    info = getattr(model, 'feature_info', None)
    if isinstance(info, (list, tuple)):
        return {entry['module'] for entry in info if isinstance(entry, dict) and 'module' in entry}
    return set()


def find_permutable_chains(model: nn.Module, producers: List[str]) -> Dict[str, PermutableChain]:
    """For each of the ``producers`` (qualified module names) whose output channels may stay permuted,
    the chain to permute instead; an empty dict when FX cannot trace ``model``."""
    try:
        graph = _Tracer().trace(model)
    except Exception:
        return {}
    modules = dict(model.named_modules(remove_duplicate=False))
    calls: Dict[int, int] = {}  # per module object: a shared module may be called under several names
    for node in graph.nodes:
        if node.op == 'call_module':
            calls[id(modules[node.target])] = calls.get(id(modules[node.target]), 0) + 1
    features = _feature_modules(model)
    chains = {}
    for node in graph.nodes:
        if node.op == 'call_module' and node.target in producers and calls[id(modules[node.target])] == 1:
            chain = _follow(node, modules, calls)
            # a module named in feature_info returns its output from forward_intermediates / features_only
            if chain is not None and not features.intersection([*chain.passed, chain.producer]):
                chains[node.target] = chain
    return chains


def permute_chain_(model: nn.Module, chain: PermutableChain, order: torch.Tensor) -> None:
    """Make the chain's modules accept the producer's channels in ``order`` (``new[c] = old[order[c]]``), in place."""
    modules = dict(model.named_modules(remove_duplicate=False))
    with torch.no_grad():
        for name in chain.norms:
            norm = modules[name]
            for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                if tensor is not None:
                    tensor.copy_(tensor[order])
        consumer = modules[chain.consumer]
        weight = consumer.weight
        if chain.flattened:
            channels = order.numel()
            if weight.shape[1] % channels:
                raise ValueError(
                    f'{chain.consumer} reads {weight.shape[1]} features, not a multiple of {channels} channels'
                )
            blocks = weight.view(weight.shape[0], channels, -1)
            blocks.copy_(blocks[:, order])
        else:
            weight.copy_(weight[:, order])
