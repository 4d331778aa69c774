"""Product kernels of many adaptive layers computed together: the one path of every forward

An adaptive layer convolves with its product kernel ``W ∘ U(sigma)``. Computed layer by layer,
each kernel costs a dozen small operations and as many again in the backward: on a GPU, where a
small network's training step is bound by the host, that per-layer Python, autograd and dispatch
work doubles the step. A :class:`KernelGroup` computes the product kernels of all the adaptive
layers of a model at once, the first time one of them runs a forward:

- the layers are split into *families* (same grid sides, ``covariance_type``, kernel window, weight dtype
  and device; the window is the grid unless the layer trains at its learned size, ``train_crop_tol``);
  each family's kernels are native operations that autograd records (:func:`family_kernels`): one ``cat``
  of the apertures, one envelope (:func:`~timm_aconv.layers.envelope.normalized_envelope`) and its
  ``split``, and per *stack* of layers whose weights share a shape one ``cat``, one product and one
  ``split``: a constant number of autograd nodes per family, whose backward runs no Python, with the bits
  of each layer's own formula (:meth:`~timm_aconv.layers.adaptive_conv.AdaptiveConvNd.product_kernel`). A
  family with a smaller window multiplies only the window of the weights and of the envelope (normalized
  over the whole grid);
- each layer then takes its kernel (a view) and convolves: a few attribute reads per layer.

Each computed kernel is handed out once, and only while it is valid: the layer's parameters are the same
tensors at the same version, no optimizer stepped, gradient mode is the same, and the group's backward has
not run since (a pre-hook on a node of the kernels' graph marks that; it holds the group weakly, so a forward
that no backward follows keeps nothing alive once the model is gone). A layer that runs again (shared, or a
second forward) computes the group anew; activation checkpointing, which runs the forward again inside the
backward, gets the same kernel (non-reentrant) or new ones for its own graph (reentrant). Evaluation
(``torch.no_grad()``) takes the same path without a graph, and its kernels serve every later evaluation until a
parameter changes (a new version, a new tensor, or new data under ``param.data = ...``): recomputing them costs a
few percent of a CIFAR ResNet's batch-64 forward on a CPU (docs/performance.md). Under ``torch.compile`` the same
computation is traced with autograd, so the compiler fuses a family into few kernels. Under TorchScript,
``torch.export`` and ``torch.func`` transforms every layer computes its own kernel.

Models are grouped as they are built: a module registration hook (:func:`group_on_registration`,
installed on import) joins each adaptive layer registered in a module to its siblings' group, so a
model built from adaptive layers ends in one group; surgery (:func:`~timm_aconv.convert_convs`,
:func:`~timm_aconv.fuse_convs`) regroups the whole model. :func:`group_adaptive_layers` groups a model by
hand; a layer that belongs to no group (after :func:`ungroup_adaptive_layers`) forms a group of its own,
which is exact but computes one layer at a time.
"""

import operator
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_module_registration_hook
from torch.optim.optimizer import register_optimizer_step_post_hook

from .envelope import normalized_envelope

__all__ = [
    'KernelGroup',
    'OptimizerSteps',
    'family_kernels',
    'group_adaptive_layers',
    'group_on_registration',
    'stream_capturing',
    'ungroup_adaptive_layers',
]

# the saved-tensor hooks in force (torch.utils.checkpoint installs some), or None where torch lacks the function
_TOP_SAVED_TENSORS_HOOKS = getattr(torch._C._autograd, '_top_saved_tensors_default_hooks', None)
# marks a module under which adaptive layers were registered (the registration hook walks only those)
HOLDS_LAYERS = '_aconv_holds_layers'
Parameters = Tuple[List[torch.Tensor], List[torch.Tensor], List[Optional[torch.Tensor]]]  # weights, sigmas, thetas


class OptimizerSteps:
    """Counts ``step()`` calls of every torch optimizer: fused optimizers (``fused=True``) update
    parameters without bumping their version counters, so kept kernels also key on this count."""

    count = 0

    @classmethod
    def hook(cls, _optimizer, _args, _kwargs) -> None:
        cls.count += 1


register_optimizer_step_post_hook(OptimizerSteps.hook)


def stream_capturing(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s CUDA stream is capturing a CUDA graph: kernels kept from outside a capture
    must not be reused inside it, nor kernels made inside it outside (a replay rewrites them)."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


class _Family:
    """Layers of one group with the same grid sides, covariance type, kernel window, weight dtype and device,
    ordered in stacks of equal weight shape: ``stacks`` holds the (first, end) positions of each stack in
    ``order``, ``stack_channels`` its filters (its share of the family's concatenated apertures); ``crop``
    the window's slice of each grid axis (None: the whole grid)."""

    def __init__(
        self, order: List[int], layers: Sequence[nn.Module], weights: Sequence[torch.Tensor], window: Tuple[int, ...]
    ):
        first = layers[order[0]]
        self.order = order
        self.out_channels = [layers[index].out_channels for index in order]
        self.dtype, self.device = weights[order[0]].dtype, weights[order[0]].device
        shapes = [weights[index].shape[1:] for index in order]
        starts = [
            position for position in range(len(order)) if position == 0 or shapes[position] != shapes[position - 1]
        ]
        self.stacks = list(zip(starts, [*starts[1:], len(order)]))
        self.stack_channels = [sum(self.out_channels[first:end]) for first, end in self.stacks]
        self.coordinates = first.grid_coordinates.to(self.dtype)
        self.rotated = first.covariance_type == 'full'
        sides, self.window = tuple(first.kernel_size), window
        self.crop: Optional[Tuple[slice, ...]] = (
            None
            if window == sides
            else tuple(slice((side - kept) // 2, (side - kept) // 2 + kept) for side, kept in zip(sides, window))
        )


def family_kernels(
    family: _Family,
    weights: Sequence[torch.Tensor],
    sigmas: Sequence[torch.Tensor],
    thetas: Sequence[Optional[torch.Tensor]],
) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """The product kernels ``W_i * U(sigma_i, theta_i)`` of a family's layers (parameters in the family's order),
    in native operations that autograd records: one ``cat`` of the apertures, one envelope
    (:func:`~timm_aconv.layers.envelope.normalized_envelope`) and one ``split`` of it per stack, then per stack
    one ``cat`` of the weights, one product and one ``split``. Each filter's kernel, and every gradient, has the
    bits the layer's own formula gives: the envelope, product and their backward work filter by filter. A window
    (``family.crop``) multiplies only the window of the weights and of the envelope, normalized over the whole
    grid; dL/dW is zero outside it. Returns the kernels and the envelopes (filters, 1, *window)."""
    sigma = torch.cat(sigmas) if len(sigmas) > 1 else sigmas[0]
    theta = None
    if family.rotated:
        theta = (torch.cat(thetas) if len(thetas) > 1 else thetas[0]).to(family.dtype)
    envelope = normalized_envelope(sigma.to(family.dtype), theta, family.coordinates)
    crop = family.crop
    if crop is not None:
        envelope = envelope[(slice(None), *crop)]
    envelope = envelope.unsqueeze(1)
    several = len(family.stacks) > 1
    envelopes = envelope.split_with_sizes(family.stack_channels) if several else (envelope,)
    kernels: List[torch.Tensor] = []
    for (first, end), stack_envelope in zip(family.stacks, envelopes):
        stack_weight = torch.cat(weights[first:end]) if end - first > 1 else weights[first]
        if crop is not None:
            stack_weight = stack_weight[(slice(None), slice(None), *crop)]
        product = stack_weight * stack_envelope
        kernels.extend(product.split_with_sizes(family.out_channels[first:end]) if end - first > 1 else (product,))
    return kernels, envelope


class _InvalidateOnBackward:
    """The pre-hook a group puts on a node of its kernels' graph: the graph is spent, the next forward computes
    new kernels. It holds the group weakly: the graph lives in C++, where Python's cycle collector cannot see
    it, so a strong reference from it would keep the group, its layers and their kernels alive after the model
    is deleted whenever a forward is not followed by a backward."""

    __slots__ = ('group',)

    def __init__(self, group: 'KernelGroup'):
        self.group = weakref.ref(group)

    def __call__(self, _grad_outputs) -> None:
        group = self.group()
        if group is not None:
            group.invalidate()


class KernelGroup:
    """The adaptive layers of one model (or one layer alone), whose product kernels are computed together.

    Built by :func:`group_adaptive_layers`; each member holds the group and its index in it. Not a
    module: it holds no state of its own that a state dict would need, only the kernels of the last
    forward.
    """

    def __init__(self, layers: Sequence[nn.Module]):
        self.layers = list(layers)
        self._families: Optional[List[_Family]] = None
        # per member: (kernel, weight, its version, sigma, its version, theta or None, its version, and for a kernel
        # computed without a graph the parameters' storage: :func:`_kept_storage`)
        self._entries: Optional[List[Tuple]] = None
        # optimizer steps, gradient mode, CUDA-graph capture and inference mode when the kernels were computed
        self._entries_key: Tuple[int, bool, bool, bool] = (-1, False, False, False)
        self._taken: List[bool] = []
        self._invalidate_hook = _InvalidateOnBackward(self)
        # the tensors and kernel windows the families were planned for
        self._planned: Tuple[Parameters, List[Tuple[int, ...]]] = (([], [], []), [])
        self._traced: List[Optional[torch.Tensor]] = [None] * len(self.layers)  # under torch.compile
        self.attach()
        self._plan()

    def attach(self) -> None:
        """Make every member point at this group (leaving the group it was in before)."""
        _leave_groups(self.layers, keep=self)
        for index, layer in enumerate(self.layers):
            layer.__dict__['_kernel_group'] = self
            layer.__dict__['_group_index'] = index

    def add(self, layers: Sequence[nn.Module]) -> None:
        """Take ``layers`` into the group (out of the groups they were in)."""
        members = {id(layer) for layer in self.layers}
        self.layers += [layer for layer in layers if id(layer) not in members]
        self.attach()
        self.reset()

    def remove(self, layers: Sequence[nn.Module]) -> None:
        """Take ``layers`` out of the group (each then computes its own kernel until grouped again)."""
        gone = {id(layer) for layer in layers}
        for layer in self.layers:
            if id(layer) in gone:
                layer.__dict__['_kernel_group'] = None
                layer.__dict__['_group_index'] = 0
        self.layers = [layer for layer in self.layers if id(layer) not in gone]
        for index, layer in enumerate(self.layers):
            layer.__dict__['_group_index'] = index
        self.reset()

    def invalidate(self) -> None:
        """Drop the kept kernels (the graph they belong to was backpropagated, or a member changed)."""
        self._entries = None

    def reset(self) -> None:
        """Plan the families again (a member moved to another device or dtype, or has a new kernel window)."""
        self._entries = None
        self._plan()
        self._traced = [None] * len(self.layers)

    def _parameters(self) -> Parameters:
        layers = self.layers
        weights = [layer._parameters.get('weight') for layer in layers]
        sigmas = [layer._parameters.get('sigma') for layer in layers]
        if any(tensor is None for tensor in weights) or any(tensor is None for tensor in sigmas):
            weights = [layer.weight for layer in layers]  # e.g. a parametrized weight
            sigmas = [layer.sigma for layer in layers]
        return weights, sigmas, [layer._parameters.get('theta') for layer in layers]

    def _plan(self) -> None:
        # planned ahead, not on a first call: a compiled forward then traces no planning (no recompile after it)
        parameters = self._parameters()
        windows = [layer.kernel_window() for layer in self.layers]
        self._families, self._planned = self._family_plan(parameters[0], windows), (parameters, windows)

    def __reduce__(self):
        # a copy (deepcopy, pickle) starts empty: the copied members join it as their state is restored
        # (AdaptiveConvNd.__setstate__), so a layer copied alone is alone in its group; never kernels
        return KernelGroup, ([],)

    # ------------------------------------------------------------------------------ eager
    def kernel(self, layer: nn.Module, index: int) -> torch.Tensor:
        """The product kernel of ``layer`` (member ``index``) for a forward.

        Each kernel the group computes with a graph is handed out once while it is valid; any other request
        computes the group's kernels anew. A kernel computed without a graph (evaluation) is handed out while it
        is valid and the parameters' data has not moved. Where saved tensors go through hooks
        (``torch.utils.checkpoint``: a checkpointed region and its recomputation in the backward) a valid kernel
        is handed out again, so that the recomputation saves what the forward saved; inside a backward without such
        hooks (a reentrant checkpoint recomputing its region) kernels are computed anew, for the inner graph.
        """
        entries = self._entries
        steps, recording, capturing, inference = self._entries_key
        if entries is not None and steps == OptimizerSteps.count and recording == torch.is_grad_enabled():
            kernel, weight, weight_version, sigma, sigma_version, theta, theta_version, storage = entries[index]
            params = layer._parameters
            try:
                valid = (
                    params.get('weight') is weight
                    and params.get('sigma') is sigma
                    and params.get('theta') is theta
                    and weight._version == weight_version
                    and sigma._version == sigma_version
                    and (theta is None or theta._version == theta_version)
                    and capturing == stream_capturing(weight)
                    and (layer._train_crop_tol is None or kernel.shape[2:] == layer.kernel_window())
                )
            except RuntimeError:  # inference tensors have no version counter
                valid = False
            if valid:
                if not recording:  # evaluation: no graph, so the kernel serves until a parameter changes
                    if inference == torch.is_inference_mode_enabled() and storage[1] == _storage_key(
                        weight, sigma, theta
                    ):
                        return kernel
                elif _TOP_SAVED_TENSORS_HOOKS is not None and _TOP_SAVED_TENSORS_HOOKS(False) is not None:
                    return kernel  # saved tensors go through hooks: a checkpointed region or its recomputation
                else:
                    taken = self._taken
                    if not taken[index] and torch._C._current_graph_task_id() == -1:
                        taken[index] = True
                        return kernel
        kernel = self._compute()[index][0]
        self._taken[index] = True
        return kernel

    def _family_plan(self, weights: List[torch.Tensor], windows: List[Tuple[int, ...]]) -> List[_Family]:
        keyed: Dict[Tuple, List[int]] = {}
        for index, (layer, weight, window) in enumerate(zip(self.layers, weights, windows)):
            key = (tuple(layer.kernel_size), layer.covariance_type, window, weight.dtype, weight.device)
            keyed.setdefault(key, []).append(index)
        families = []
        for key, indices in keyed.items():
            # stable order by weight shape: layers of one shape form one stack
            shapes: Dict[Tuple, List[int]] = {}
            for index in indices:
                shapes.setdefault(tuple(weights[index].shape[1:]), []).append(index)
            order = [index for stack in shapes.values() for index in stack]
            families.append(_Family(order, self.layers, weights, key[2]))
        return families

    def _planned_for(self, parameters: Parameters, windows: List[Tuple[int, ...]]) -> bool:
        planned, planned_windows = self._planned
        return (
            self._families is not None
            and all(
                all(map(operator.is_, tensors, planned_tensors))
                for tensors, planned_tensors in zip(parameters, planned)
            )
            and windows == planned_windows
        )

    def _compute(self) -> List[Tuple]:
        layers = self.layers
        parameters = self._parameters()
        weights, sigmas, thetas = parameters
        windows = [layer.kernel_window() for layer in layers]
        if not self._planned_for(parameters, windows):
            # new parameter tensors (first call, swapped parameters: shapes, dtypes and devices may differ)
            # or new kernel windows
            self._families, self._planned = self._family_plan(weights, windows), (parameters, windows)
        kernels: List[Optional[torch.Tensor]] = [None] * len(layers)
        recording = torch.is_grad_enabled()
        for family in self._families:
            order = family.order
            family_weights = [weights[index] for index in order]
            family_sigmas = [sigmas[index] for index in order]
            family_thetas = [thetas[index] for index in order]
            trained = any(tensor.requires_grad for tensor in family_weights) or any(
                tensor.requires_grad for tensor in family_sigmas
            )
            if recording and trained:
                family_kernel_list, envelope = family_kernels(family, family_weights, family_sigmas, family_thetas)
                # the first backward through these kernels frees their graph: a hook on a node it runs
                # (the envelope's where an aperture is trained, else each stack's product) drops them then
                nodes = (
                    (envelope.grad_fn,)
                    if envelope.grad_fn is not None
                    else {kernel.grad_fn for kernel in family_kernel_list}
                )
                for node in nodes:
                    node.register_prehook(self._invalidate_hook)
            else:
                with torch.no_grad():  # evaluation, or a frozen family beside trained ones: no autograd graph
                    family_kernel_list, _ = family_kernels(family, family_weights, family_sigmas, family_thetas)
            for index, kernel in zip(order, family_kernel_list):
                kernels[index] = kernel
        try:
            entries = [
                (
                    kernel,
                    weight,
                    weight._version,
                    sigma,
                    sigma._version,
                    theta,
                    -1 if theta is None else theta._version,
                    None if recording else _kept_storage(weight, sigma, theta),
                )
                for kernel, weight, sigma, theta in zip(kernels, weights, sigmas, thetas)
            ]
        except RuntimeError:  # inference tensors have no version counter: nothing is handed out twice
            entries = [(kernel, None, -1, None, -1, None, -1, None) for kernel in kernels]
        capturing = stream_capturing(weights[0])
        key = (OptimizerSteps.count, recording, capturing, torch.is_inference_mode_enabled())
        self._entries, self._entries_key = entries, key
        self._taken = [False] * len(entries)
        return entries

    # ------------------------------------------------------------------------------ traced
    def traced_kernel(self, index: int) -> torch.Tensor:
        """:meth:`kernel` under ``torch.compile``: the first member to run computes the group's kernels
        with autograd (the compiler fuses them); each member takes its own once."""
        kernel = self._traced[index]
        if kernel is None:
            self._traced = self._formula_kernels()
            kernel = self._traced[index]
        self._traced[index] = None
        return kernel

    def _formula_kernels(self) -> List[Optional[torch.Tensor]]:
        # the windows are traced as constants (a window that changes recompiles); the plan for them is made
        # outside the traced code (a layer's new window replans its group), here only where a layer's mode
        # differs from the plan's (a forward recording gradients in eval mode)
        windows = [layer.kernel_window() for layer in self.layers]
        families = self._families
        if windows != self._planned[1]:
            families = self._family_plan(self._planned[0][0], windows)
        kernels: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        layers = self.layers
        for family in families:
            order = family.order
            family_kernel_list, _ = family_kernels(
                family,
                [layers[index].weight for index in order],
                [layers[index].sigma for index in order],
                [layers[index].theta for index in order],
            )
            for index, kernel in zip(order, family_kernel_list):
                kernels[index] = kernel
        return kernels


def _storage_key(*tensors: Optional[torch.Tensor]) -> Tuple:
    """Where each tensor's data lies: ``param.data = ...`` swaps it without a new version."""
    return tuple((tensor.data_ptr(), tensor.stride()) for tensor in tensors if tensor is not None)


def _kept_storage(*tensors: Optional[torch.Tensor]) -> Tuple[Tuple[torch.Tensor, ...], Tuple]:
    """The parameters' data (kept alive, so that a freed address cannot come back under the same key) and their
    :func:`_storage_key`: what an evaluation kernel is reused against."""
    return tuple(tensor.detach() for tensor in tensors if tensor is not None), _storage_key(*tensors)


def group_adaptive_layers(model: nn.Module) -> Optional[KernelGroup]:
    """Compute the product kernels of all adaptive layers of ``model`` together.

    Registered models and :func:`~timm_aconv.convert_convs` do it already; call it for a model
    built from bare adaptive layers, or again after changing which layers a model holds by hand (the
    surgery functions regroup by themselves). Results and gradients are the same as layer by layer; the
    group only changes how many operations a step runs.

    Returns:
        The group (its members hold it; copies and pickles of the model hold a copy of it), or None
        when ``model`` has no adaptive layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be a torch.nn.Module, got {type(model).__name__}')
    ungroup_adaptive_layers(model)
    layer_class = _layer_class()
    layers = [module for module in model.modules() if isinstance(module, layer_class)]
    if not layers:
        return None
    model.__dict__[HOLDS_LAYERS] = True
    return KernelGroup(layers)


def ungroup_adaptive_layers(model: nn.Module) -> None:
    """Undo :func:`group_adaptive_layers` on ``model`` and every module inside it: each adaptive
    layer computes its own kernel again (until its model is grouped again)."""
    layer_class = _layer_class()
    _leave_groups([module for module in model.modules() if isinstance(module, layer_class)])


def _leave_groups(layers: Sequence[nn.Module], keep: Optional[KernelGroup] = None) -> None:
    """Take each of ``layers`` out of the group it belongs to (other than ``keep``)."""
    by_group: Dict[int, Tuple[KernelGroup, List[nn.Module]]] = {}
    for layer in layers:
        group = layer.__dict__.get('_kernel_group')
        if group is not None and group is not keep:
            by_group.setdefault(id(group), (group, []))[1].append(layer)
    for group, leaving in by_group.values():
        group.remove(leaving)


def group_on_registration(parent: nn.Module, name: str, module: Optional[nn.Module]) -> None:
    """A module registration hook (``torch.nn.modules.module.register_module_module_registration_hook``)
    that keeps the adaptive layers of a model in one group while it is built or edited:

    - the adaptive layers of a module replaced under ``name`` leave their group;
    - when ``module`` is an adaptive layer or holds some: if ``parent``'s other adaptive layers are all in
      one group, ``module``'s join it; else, unless ``module``'s are all in one group already (a wrapper
      such as DDP, a slice of a ``Sequential``), ``parent``'s and ``module``'s form one new group.

    Only modules registered with adaptive layers inside are walked; any other registration costs a check
    or two.
    """
    layer_class = _layer_class()
    replaced = parent._modules.get(name)
    if replaced is not None and replaced is not module and _holds_layers(replaced, layer_class):
        _leave_groups([sub for sub in replaced.modules() if isinstance(sub, layer_class)])
    if module is None or not _holds_layers(module, layer_class):
        return
    present = []
    if parent.__dict__.get(HOLDS_LAYERS):
        left_out = {id(sub) for sub in replaced.modules()} if replaced is not None else set()
        present = [sub for sub in parent.modules() if isinstance(sub, layer_class) and id(sub) not in left_out]
    parent.__dict__[HOLDS_LAYERS] = True
    arriving = [sub for sub in module.modules() if isinstance(sub, layer_class)]
    present_group = _common_group(present)
    if present_group is not None:
        present_group.add(arriving)
    elif present or _common_group(arriving) is None:
        ids = {id(layer) for layer in present}
        KernelGroup(present + [layer for layer in arriving if id(layer) not in ids])


def _holds_layers(module: nn.Module, layer_class: type) -> bool:
    return isinstance(module, layer_class) or bool(module.__dict__.get(HOLDS_LAYERS))


def _common_group(layers: Sequence[nn.Module]) -> Optional[KernelGroup]:
    """The group all of ``layers`` belong to, or None (none, several, or a layer in no group)."""
    group = layers[0].__dict__.get('_kernel_group') if layers else None
    if group is None or any(layer.__dict__.get('_kernel_group') is not group for layer in layers):
        return None
    return group


def _layer_class() -> type:
    from .adaptive_conv import AdaptiveConvNd  # the layer module imports this one

    return AdaptiveConvNd


_registration_hook = register_module_module_registration_hook(group_on_registration)
