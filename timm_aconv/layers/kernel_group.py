""" Product kernels of many adaptive layers computed together

An adaptive layer trains through its product kernel ``W ∘ U(sigma)``. Computed layer by layer,
each kernel costs a dozen small operations and as many again in the backward: on a GPU, where a
small network's training step is bound by the host, that per-layer Python, autograd and dispatch
work doubles the step. A :class:`KernelGroup` computes the product kernels of all the adaptive
layers of a model at once, the first time one of them runs in a training forward:

- the layers are split into *families* (same grid size, weight dtype and device); each family is
  one autograd node (:class:`_FamilyProductKernels`): one ``cat`` of the sigmas, one envelope
  computation, and per *stack* of layers whose weights share a shape one ``cat``, one product and
  one ``split``; its backward is the same handful of operations, with dL/dsigma in closed form
  (paper eq. 12 through the normalization of eq. 21);
- each layer then takes its kernel (a view) and convolves: a few attribute reads per layer.

A kernel is taken again (a layer run twice, a second forward before the backward) while it is
still valid: the layer's ``weight`` and ``sigma`` are the same tensors at the same version and the
group's backward has not run since (that backward frees the graph; the next forward recomputes).
Under ``torch.compile`` the same computation is traced with autograd, so the compiler fuses a
family into a constant number of kernels. Under TorchScript, ``torch.export`` and ``torch.func``
transforms every layer computes its own kernel (:meth:`AdaptiveConv2d.product_kernel`).

The models this package registers and the models :func:`~timm_aconv.convert_convs` returns are
grouped already; :func:`group_adaptive_layers` groups any other model (a layer that belongs to
no group forms a group of its own, which is exact but computes one layer at a time).
"""
import operator
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable
from torch.optim.optimizer import register_optimizer_step_post_hook

from .envelope import SIGMA_EPS, softmax_envelope, softmax_weights

__all__ = ['KernelGroup', 'group_adaptive_layers', 'ungroup_adaptive_layers', 'register_batched_envelopes',
           'OptimizerSteps', 'stream_capturing']

# the attribute of the module that owns a group (so that copies and pickles of the model carry it)
GROUP_ATTRIBUTE = '_aconv_kernel_group'


class OptimizerSteps:
    """ Counts ``step()`` calls of every torch optimizer: fused optimizers (``fused=True``) update
    parameters without bumping their version counters, so kept kernels also key on this count. """
    count = 0

    @classmethod
    def hook(cls, _optimizer, _args, _kwargs) -> None:
        cls.count += 1


register_optimizer_step_post_hook(OptimizerSteps.hook)


def stream_capturing(tensor: torch.Tensor) -> bool:
    """ Whether ``tensor``'s CUDA stream is capturing a CUDA graph: kernels kept from outside a capture
    must not be reused inside it, nor kernels made inside it outside (a replay rewrites them). """
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


class _Family:
    """ Layers of one group with the same grid size, weight dtype and device, ordered in stacks of
    equal weight shape: ``stacks`` holds (first, end) positions into ``order`` and the filter range
    (start, stop) of each stack in the family's concatenated sigmas. """

    def __init__(self, order: List[int], layers: Sequence[nn.Module], weights: Sequence[torch.Tensor]):
        self.order = order
        self.out_channels = [layers[index].out_channels for index in order]
        self.grid_size = layers[order[0]].grid_size
        self.stacks: List[Tuple[int, int, int, int]] = []
        first = start = 0
        shapes = [weights[index].shape for index in order]
        self.dtype, self.device = weights[order[0]].dtype, weights[order[0]].device
        for position in range(1, len(order) + 1):
            if position == len(order) or shapes[position][1:] != shapes[first][1:]:
                stop = start + sum(self.out_channels[first:position])
                self.stacks.append((first, position, start, stop))
                first, start = position, stop
        self.stack_channels = [stop - start for _first, _end, start, stop in self.stacks]
        self.sq_distance = layers[order[0]].sq_distance.to(self.dtype).reshape(1, -1)  # flattened


class _FamilyProductKernels(torch.autograd.Function):
    """ The product kernels ``W_i * U(sigma_i)`` of a family of layers: one autograd node.

    Inputs: the family, then its weights and its sigmas in the family's order. Forward: one
    envelope computation over all filters and, per stack, one product of the concatenated weights.
    Backward: ``dL/dW = G * U`` per stack and ``dL/dsigma_q = sum_kl R_q * d log U_q / d sigma_q``,
    with ``R_q = sum_c G * K`` and ``d log U / d sigma = (sigma / t) * (mean_p(z) - z)``
    (:func:`~timm_aconv.layers.envelope.envelope_and_log_derivative` derives it).
    """

    @staticmethod
    def forward(ctx, group: 'KernelGroup', family: _Family, *params: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        count = len(family.order)
        weights, sigmas = params[:count], params[count:]
        dtype = family.dtype
        sigma = torch.cat(sigmas) if count > 1 else sigmas[0]
        if sigma.dtype != dtype:
            sigma = sigma.to(dtype)
        size = family.grid_size
        probabilities, exponent, neg_half_two_var = softmax_weights(sigma, family.sq_distance, SIGMA_EPS)
        envelope = probabilities.sqrt().mul_(size).view(-1, 1, size, size)
        envelopes = envelope.split(family.stack_channels) if len(family.stacks) > 1 else (envelope,)
        kernels: List[torch.Tensor] = []
        products = []
        for (first, end, _start, _stop), stack_envelope in zip(family.stacks, envelopes):
            if end - first > 1:
                product = torch.cat(weights[first:end]) * stack_envelope
                kernels.extend(product.split(family.out_channels[first:end]))
            else:
                product = weights[first] * stack_envelope
                kernels.append(product)
            products.append(product)
        ctx.group, ctx.family = group, family
        ctx.saved = (products, envelopes, probabilities, exponent, sigma, neg_half_two_var)
        ctx.sigma_dtypes = [None if sigma.dtype == dtype else sigma.dtype for sigma in sigmas]
        ctx.set_materialize_grads(False)
        return tuple(kernels)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_kernels: Optional[torch.Tensor]):
        ctx.group.invalidate()  # the graph is spent: the next forward computes new kernels
        family = ctx.family
        products, envelopes, probabilities, exponent, sigma, neg_half_two_var = ctx.saved
        ctx.saved = None  # once: the memory goes with the graph
        count = len(family.order)
        needs_weight = any(ctx.needs_input_grad[2:2 + count])
        needs_sigma = any(ctx.needs_input_grad[2 + count:])
        grad_weights: List[Optional[torch.Tensor]] = []
        reduced = []
        for (first, end, _start, _stop), product, stack_envelope in zip(family.stacks, products, envelopes):
            grads = [torch.zeros_like(product[:1]).expand(channels, *product.shape[1:]) if grad is None else grad
                     for grad, channels in zip(grad_kernels[first:end], family.out_channels[first:end])]
            grad = torch.cat(grads) if end - first > 1 else grads[0]
            if needs_weight:
                grad_weight = grad * stack_envelope
                grad_weights.extend(grad_weight.split(family.out_channels[first:end]) if end - first > 1 else
                                    (grad_weight,))
            if needs_sigma:
                reduced.append((grad * product).sum(1))
        if needs_sigma:
            # R (filters, n²); dL/dsigma = (sigma / -t) * sum_kl R * (z - mean_p(z))
            residual = (torch.cat(reduced) if len(reduced) > 1 else reduced[0]).flatten(1)
            mean_exponent = (probabilities * exponent).sum(1, keepdim=True)
            grad_sigma = (exponent - mean_exponent).mul_(residual).sum(1).mul_(sigma / neg_half_two_var)
            grad_sigmas = grad_sigma.split(family.out_channels) if count > 1 else (grad_sigma,)
        else:
            grad_sigmas = (None,) * count
        if not needs_weight:
            grad_weights = [None] * count
        weight_grads = [grad if needed else None for grad, needed in zip(grad_weights, ctx.needs_input_grad[2:])]
        sigma_grads = [None if not needed else grad if dtype is None else grad.to(dtype)
                       for grad, needed, dtype in zip(grad_sigmas, ctx.needs_input_grad[2 + count:], ctx.sigma_dtypes)]
        return (None, None, *weight_grads, *sigma_grads)


class KernelGroup:
    """ The adaptive layers of one model (or one layer alone), whose product kernels are computed together.

    Built by :func:`group_adaptive_layers`; each member holds the group and its index in it. Not a
    module: it holds no state of its own that a state dict would need, only the kernels of the last
    training forward.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        self.layers = list(layers)
        self._families: Optional[List[_Family]] = None
        self._entries: Optional[List[Tuple]] = None  # (kernel, weight, weight version, sigma, sigma version)
        self._entries_steps = -1
        self._entries_capturing = False
        self._planned: Tuple[List[torch.Tensor], List[torch.Tensor]] = ([], [])  # the tensors the families were planned for
        self._traced: List[Optional[torch.Tensor]] = [None] * len(self.layers)  # under torch.compile
        self.attach()

    def attach(self) -> None:
        """ Make every member point at this group. """
        for index, layer in enumerate(self.layers):
            layer.__dict__['_kernel_group'] = self
            layer.__dict__['_group_index'] = index

    def invalidate(self) -> None:
        """ Drop the kept kernels (the graph they belong to was backpropagated, or a member changed). """
        self._entries = None

    def reset(self) -> None:
        """ Forget the families too (a member moved to another device or dtype). """
        self._entries = None
        self._families = None
        self._traced = [None] * len(self.layers)

    def __getstate__(self) -> Dict:
        # copies keep the membership, never kernels (they belong to the original's graph)
        return dict(layers=self.layers)

    def __setstate__(self, state: Dict) -> None:
        self.__init__(state['layers'])

    # ------------------------------------------------------------------------------ eager
    def kernel(self, layer: nn.Module, index: int) -> torch.Tensor:
        """ The product kernel of ``layer`` (member ``index``) for a training forward: the kept one while
        it is valid, else the group's kernels are computed anew. """
        entries = self._entries
        if entries is not None and self._entries_steps == OptimizerSteps.count:
            kernel, weight, weight_version, sigma, sigma_version = entries[index]
            params = layer._parameters
            if params.get('weight') is weight and params.get('sigma') is sigma and weight._version == weight_version \
                    and sigma._version == sigma_version and self._entries_capturing == stream_capturing(weight):
                return kernel
        return self._compute()[index][0]

    def _family_plan(self, weights: List[torch.Tensor], sigmas: List[torch.Tensor]) -> List[_Family]:
        keyed: Dict[Tuple, List[int]] = {}
        for index, (layer, weight) in enumerate(zip(self.layers, weights)):
            keyed.setdefault((layer.grid_size, weight.dtype, weight.device), []).append(index)
        families = []
        for indices in keyed.values():
            # stable order by weight shape: layers of one shape form one stack
            shapes: Dict[Tuple, List[int]] = {}
            for index in indices:
                shapes.setdefault(tuple(weights[index].shape[1:]), []).append(index)
            families.append(_Family([index for stack in shapes.values() for index in stack], self.layers, weights))
        self._planned = (weights, sigmas)
        return families

    def _compute(self) -> List[Tuple]:
        layers = self.layers
        weights = [_parameter(layer, 'weight') for layer in layers]
        sigmas = [_parameter(layer, 'sigma') for layer in layers]
        planned_weights, planned_sigmas = self._planned
        if self._families is None or not (all(map(operator.is_, weights, planned_weights)) and
                                          all(map(operator.is_, sigmas, planned_sigmas))):
            # new parameter tensors (first call, swapped parameters): shapes, dtypes and devices may differ
            self._families = self._family_plan(weights, sigmas)
        kernels: List[Optional[torch.Tensor]] = [None] * len(layers)
        for family in self._families:
            order = family.order
            inputs = [weights[index] for index in order] + [sigmas[index] for index in order]
            for index, kernel in zip(order, _family_kernels(self, family, inputs)):
                kernels[index] = kernel
        entries = [(kernel, weight, weight._version, sigma, sigma._version)
                   for kernel, weight, sigma in zip(kernels, weights, sigmas)]
        self._entries, self._entries_steps = entries, OptimizerSteps.count
        self._entries_capturing = stream_capturing(weights[0])
        return entries

    # ------------------------------------------------------------------------------ traced
    def traced_kernel(self, index: int) -> torch.Tensor:
        """ :meth:`kernel` under ``torch.compile``: the first member to run computes the group's kernels
        with autograd (the compiler fuses them); each member takes its own once. """
        kernel = self._traced[index]
        if kernel is None:
            self._traced = self._formula_kernels()
            kernel = self._traced[index]
        self._traced[index] = None
        return kernel

    def _formula_kernels(self) -> List[Optional[torch.Tensor]]:
        if self._families is None:
            self._families = self._family_plan([layer.weight for layer in self.layers],
                                               [layer.sigma for layer in self.layers])
        kernels: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        for family in self._families:
            layers = [self.layers[index] for index in family.order]
            dtype = layers[0].weight.dtype
            sigma = torch.cat([layer.sigma for layer in layers]) if len(layers) > 1 else layers[0].sigma
            envelope = softmax_envelope(sigma.to(dtype), layers[0].sq_distance.to(dtype)).unsqueeze(1)
            for first, end, start, stop in family.stacks:
                stack = layers[first:end]
                if len(stack) > 1:
                    products = (torch.cat([layer.weight for layer in stack]) * envelope[start:stop]).split(
                        family.out_channels[first:end])
                else:
                    products = (stack[0].weight * envelope[start:stop],)
                for index, product in zip(family.order[first:end], products):
                    kernels[index] = product
        return kernels


def _parameter(layer: nn.Module, name: str) -> torch.Tensor:
    """ ``getattr(layer, name)`` without ``nn.Module.__getattr__`` where the tensor is a registered parameter. """
    tensor = layer._parameters.get(name)
    return getattr(layer, name) if tensor is None else tensor


def _family_kernels(group: KernelGroup, family: _Family, inputs: List[torch.Tensor]) -> Sequence[torch.Tensor]:
    if any(tensor.requires_grad for tensor in inputs):
        return _FamilyProductKernels.apply(group, family, *inputs)
    with torch.no_grad():  # a frozen family beside trained ones: no autograd node
        return _FamilyProductKernels.forward(_NoContext(), group, family, *inputs)


class _NoContext:
    """ Stands in for the autograd context of a forward no backward will follow. """

    def set_materialize_grads(self, _value: bool) -> None:
        pass


def group_adaptive_layers(model: nn.Module) -> Optional[KernelGroup]:
    """ Compute the product kernels of all adaptive layers of ``model`` together in training.

    Registered models and :func:`~timm_aconv.convert_convs` do it already; call it for a model
    built from bare :class:`~timm_aconv.AdaptiveConv2d` layers, or again after changing which
    layers a model holds by hand (the surgery functions regroup by themselves). Results and
    gradients are the same as layer by layer; the group only changes how many operations a
    training step runs.

    Returns:
        The group (kept on ``model``, so that copies and pickles of the model carry it), or None
        when ``model`` has no adaptive layer.
    """
    from .adaptive_conv import AdaptiveConv2d  # the layer module imports this one
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    ungroup_adaptive_layers(model)
    layers = [module for module in model.modules() if isinstance(module, AdaptiveConv2d)]
    if not layers:
        return None
    group = KernelGroup(layers)
    model.__dict__[GROUP_ATTRIBUTE] = group
    return group


def ungroup_adaptive_layers(model: nn.Module) -> None:
    """ Undo :func:`group_adaptive_layers` on ``model`` and every module inside it: each adaptive
    layer computes its own kernel again. """
    for module in model.modules():
        module.__dict__.pop(GROUP_ATTRIBUTE, None)
        if '_kernel_group' in module.__dict__:
            module.__dict__['_kernel_group'] = None
            module.__dict__['_group_index'] = 0


class _UngroupHandle:
    """ ``remove()`` ungroups the model (the handle :func:`register_batched_envelopes` returns). """

    def __init__(self, model: nn.Module):
        self.model = model

    def remove(self) -> None:
        ungroup_adaptive_layers(self.model)


def register_batched_envelopes(model: nn.Module) -> _UngroupHandle:
    """ Deprecated: :func:`group_adaptive_layers` (the default of every registered and converted model)
    computes envelopes and products of all layers together. Groups ``model``; ``remove()`` on the
    returned handle ungroups it. """
    warnings.warn('register_batched_envelopes is deprecated: models are grouped by default '
                  '(timm_aconv.group_adaptive_layers groups any other model)', DeprecationWarning, stacklevel=2)
    group_adaptive_layers(model)
    return _UngroupHandle(model)
