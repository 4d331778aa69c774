"""Product kernels computed together (timm_aconv.layers.kernel_group): exact, and valid whatever happens
between two forwards.

The reference everywhere is the formula with autograd: ``conv2d(x, weight * envelope(sigma))`` per layer
(:meth:`AdaptiveConv2d.product_kernel`), or the same model with every layer in a group of its own.
"""

import copy
import io
import pickle

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

import timm_aconv
import timm_aconv.layers.kernel_group as kernel_group_module
from timm_aconv import AdaptiveConv2d
from timm_aconv.smp.paper_unet import PaperUNet


def _mixed_model(dtype=torch.float32) -> nn.Module:
    """Layers of two grid sizes and four weight shapes: stride, dilation, groups, depthwise, every padding mode,
    bias or not; grouped as a registered model is."""
    torch.manual_seed(0)
    layers = [
        AdaptiveConv2d(3, 4, 5, padding=2, bias=True),
        AdaptiveConv2d(4, 4, 3, padding=1, stride=2, padding_mode='reflect'),
        AdaptiveConv2d(4, 4, 5, padding='same', dilation=2, padding_mode='circular', bias=True),
        AdaptiveConv2d(4, 6, 3, padding=1, groups=2, padding_mode='replicate'),
        AdaptiveConv2d(6, 6, 3, padding='same', groups=6),  # depthwise
        AdaptiveConv2d(6, 4, 5, padding=2, sigma_init=(0.2, 0.9)),
    ]
    model = nn.Sequential(*[module for layer in layers for module in (layer, nn.Tanh())]).to(dtype)
    timm_aconv.group_adaptive_layers(model)
    return model


def _formula_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model``'s forward with every adaptive layer convolving with its own autograd formula."""
    for module in model:
        x = (
            module._conv_forward(x, module.product_kernel(), module.bias)
            if isinstance(module, AdaptiveConv2d)
            else module(x)
        )
    return x


def _output_and_grads(model: nn.Module, x: torch.Tensor, forward=None, grad_out=None):
    model.zero_grad(set_to_none=True)
    output = (forward or model)(x)
    output.backward(torch.ones_like(output) if grad_out is None else grad_out)
    return [output.detach()] + [param.grad.clone() for param in model.parameters() if param.grad is not None]


def _group(model: nn.Module) -> kernel_group_module.KernelGroup:
    return next(timm_aconv.adaptive_layers(model))._kernel_group


@pytest.mark.parametrize('dtype,tolerance', [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=['f64', 'f32'])
@pytest.mark.parametrize('channels_last', [False, True], ids=['contiguous', 'channels_last'])
def test_grouped_outputs_and_gradients_equal_the_formula(dtype, tolerance, channels_last):
    model = _mixed_model(dtype)
    x = torch.randn(2, 3, 12, 12, dtype=dtype)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    group = _group(model)
    assert len(group.layers) == 6 and all(layer._kernel_group is group for layer in timm_aconv.adaptive_layers(model))
    grad_out = torch.randn_like(model(x))
    actual = _output_and_grads(model, x, grad_out=grad_out)
    expected = _output_and_grads(model, x, lambda inputs: _formula_forward(model, inputs), grad_out)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    # two families (grid sizes 5 and 3), stacked by weight shape
    assert sorted(len(family.order) for family in group._families) == [3, 3]


def test_gradcheck_of_the_grouped_path_in_weights_sigmas_and_biases():
    model = _mixed_model(torch.float64)
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(1, 3, 7, 7, dtype=torch.float64)

    def run(*values):
        return torch.func.functional_call(model, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(run, tuple(param.detach().requires_grad_(True) for param in model.parameters()))


def _kernel_graph_nodes(model: nn.Module) -> int:
    """Autograd nodes between the kept kernels of ``model``'s group and its parameters (leaves excluded)."""
    timm_aconv.group_adaptive_layers(model)
    stack = [entry[0].grad_fn for entry in _group(model)._compute()]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen or type(node).__name__ == 'AccumulateGrad':
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return len(seen)


def test_a_constant_number_of_native_autograd_nodes_per_family_and_bits_of_the_formula():
    model = _mixed_model()

    def repeated(times):  # every layer repeated: the same two families and four stacks, each one deeper
        return nn.Sequential(*[copy.deepcopy(module) for module in model for _ in range(times)])

    # per family: a cat of the sigmas, 10 for the envelope and its split; per stack: a cat, a product, a split
    assert _kernel_graph_nodes(repeated(2)) == _kernel_graph_nodes(repeated(5)) == 2 * 12 + 6 * 3
    # native operations only: the backward runs no Python
    x = torch.randn(2, 3, 12, 12)
    output = model(x)
    kernels = [layer._kernel_group._entries[layer._group_index][0] for layer in timm_aconv.adaptive_layers(model)]
    assert not any(isinstance(kernel.grad_fn, torch.autograd.function.BackwardCFunction) for kernel in kernels)
    # every value and gradient has the bits of the formula with autograd, and of a layer in a group of its own
    expected = _output_and_grads(model, x, lambda inputs: _formula_forward(model, inputs))
    alone = copy.deepcopy(model)
    timm_aconv.ungroup_adaptive_layers(alone)
    assert all(layer._kernel_group is None for layer in timm_aconv.adaptive_layers(alone))
    for outputs in (_output_and_grads(model, x), _output_and_grads(alone, x)):
        for got, want in zip(outputs, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert all(
        layer._kernel_group is not None and len(layer._kernel_group.layers) == 1
        for layer in timm_aconv.adaptive_layers(alone)
    )
    assert output.shape == (2, 4, 6, 6)


def test_kernels_follow_every_step_and_accumulated_gradients_add_up():
    model, reference = _mixed_model(), _mixed_model()
    timm_aconv.ungroup_adaptive_layers(reference)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, reference)]
    batches = torch.randn(3, 2, 3, 12, 12)
    for _ in range(2):
        for m, optimizer in zip((model, reference), optimizers):
            optimizer.zero_grad()
            for batch in batches[:2]:  # gradient accumulation: two forwards and backwards per step
                m(batch).square().mean().backward()
            optimizer.step()
            timm_aconv.clamp_sigmas_(m)
    for got, want in zip(_output_and_grads(model, batches[2]), _output_and_grads(reference, batches[2]), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    grads = _output_and_grads(model, batches[2])[1:]
    model.zero_grad()
    for half in batches[2].split(1):  # two forwards before one backward: each computes its own kernels
        model(half).backward(torch.ones(1, 4, 6, 6))
    for got, want in zip([param.grad for param in model.parameters()], grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _in_place(layer):
    with torch.no_grad():
        layer.weight.mul_(2)


def _sigma_in_place(layer):
    with torch.no_grad():
        layer.sigma.fill_(0.7)


def _swap_parameter(layer):
    layer.sigma = nn.Parameter(torch.full_like(layer.sigma, 0.3))


def _assign_data(layer):
    layer.weight.data = torch.randn_like(layer.weight)


def _load_state_dict(layer):
    state = {name: value * 0.5 if name == 'weight' else value for name, value in layer.state_dict().items()}
    layer.load_state_dict(state)


def _to_float64(layer):
    layer.to(torch.float64)


@pytest.mark.parametrize(
    'change',
    [_in_place, _sigma_in_place, _swap_parameter, _assign_data, _load_state_dict, _to_float64],
    ids=lambda fn: fn.__name__.lstrip('_'),
)
def test_a_change_between_two_forwards_computes_new_kernels(change):
    """A kept kernel is never handed out after its layer changed, even with no backward in between
    (each layer also runs twice here: the second call computes anew)."""
    model = _mixed_model()
    x = torch.randn(1, 3, 12, 12)
    model(x)  # kernels computed, handed out and kept
    layer = model[4]
    change(layer)
    dtype = layer.weight.dtype
    x = torch.randn(1, 4, 6, 6, dtype=dtype, requires_grad=True)
    output = layer(x)
    expected = layer._conv_forward(x, layer.product_kernel(), layer.bias)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    output.sum().backward()
    assert layer.sigma.grad is not None and layer.sigma.grad.abs().sum() > 0


def test_a_layer_that_did_not_run_never_gets_a_stale_kernel():
    model = _mixed_model()
    x = torch.randn(1, 3, 12, 12)
    model[:6](x)  # layers 4 and 5 did not run: their kernels stay kept, unused
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(x).sum().backward()
    optimizer.step()
    layer = model[10]
    h = torch.randn(1, 6, 6, 6)
    torch.testing.assert_close(layer(h), layer._conv_forward(h, layer.product_kernel(), layer.bias), rtol=0, atol=0)
    # a fused optimizer bumps no version counter: its step still retires the kept kernels
    model(x)
    fused = torch.optim.Adam(model.parameters(), lr=0.5, fused=True)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    fused.step()
    torch.testing.assert_close(layer(h), layer._conv_forward(h, layer.product_kernel(), layer.bias), rtol=0, atol=0)


def test_shared_layer_and_activation_checkpointing_match_the_formula():
    torch.manual_seed(0)
    shared = AdaptiveConv2d(4, 4, 5, padding=2)
    model = nn.Sequential(
        AdaptiveConv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        shared,
        nn.ReLU(),
        shared,
        nn.ReLU(),
        AdaptiveConv2d(4, 4, 5, padding=2),
    )
    timm_aconv.group_adaptive_layers(model)
    assert len(_group(model).layers) == 3  # the shared layer once
    x = torch.randn(2, 3, 8, 8)

    def formula(inputs):
        for module in model:
            inputs = (
                module._conv_forward(inputs, module.product_kernel(), module.bias)
                if isinstance(module, AdaptiveConv2d)
                else module(inputs)
            )
        return inputs

    expected = _output_and_grads(model, x, formula)
    for got, want in zip(_output_and_grads(model, x), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)

    # the middle layers recomputed in the backward, as timm's checkpoint_seq does
    for use_reentrant in (False, True):

        def run(inputs, use_reentrant=use_reentrant):
            inputs = model[1](model[0](inputs))
            inputs = checkpoint(
                lambda h: model[5](model[4](model[3](model[2](h)))), inputs, use_reentrant=use_reentrant
            )
            return model[6](inputs)

        for got, want in zip(_output_and_grads(model, x.requires_grad_(use_reentrant), run), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_copies_and_pickles_carry_their_own_group_and_a_copied_layer_goes_alone():
    model = timm.create_model('aconv_resnet8', widths=(2, 4, 8))
    x = torch.randn(2, 3, 8, 8)
    model(x)  # kernels kept: not copied
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        group = _group(copied)
        assert group is not _group(model) and group._entries is None
        layers = list(timm_aconv.adaptive_layers(copied))
        assert group.layers == layers and all(layer._kernel_group is group for layer in layers)
        for got, want in zip(_output_and_grads(copied, x), _output_and_grads(model, x), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert _group(torch.load(buffer, weights_only=False)) is not None
    layer = copy.deepcopy(model.conv1)  # alone: no group dragging the model's other layers along
    assert layer._kernel_group.layers == [layer] and len(_group(model).layers) == 7
    layer(torch.randn(1, 3, 8, 8)).sum().backward()
    assert layer.sigma.grad is not None


def test_registered_and_converted_models_are_grouped_and_surgery_regroups():
    for model in (
        timm.create_model('aconv_resnet20', widths=(2, 4, 8)),
        timm.create_model('aconv_resnet18'),
        timm.create_model('aconv_simple_cnn'),
        timm.create_model('aconv_resnet20', widths=(2, 4, 8), features_only=True),
        smp.Unet('aconv_resnet18', encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4)),
        smp.create_model('aconv_unet', encoder_name='resnet18', encoder_weights=None),
        PaperUNet(),  # its entry convolution alone
        _HandBuilt(),
    ):
        layers = list(timm_aconv.adaptive_layers(model))
        groups = {layer._kernel_group for layer in layers}
        assert len(groups) == 1 and None not in groups and groups.pop().layers == layers, type(model).__name__
    model = timm.create_model('resnet18')
    timm_aconv.convert_convs(model, sizes=[7], include=['conv1', 'layer1.*'])
    assert len(_group(model).layers) == 5
    timm_aconv.convert_convs(model, sizes=[5], include=['layer2.0.conv1'])
    assert len(_group(model).layers) == 6
    converted = list(timm_aconv.adaptive_layers(model))
    timm_aconv.fuse_convs(model, crop_tol=None)
    assert not list(timm_aconv.adaptive_layers(model)) and all(layer._kernel_group is None for layer in converted)


def test_converted_timm_resnet18_and_smp_unet_first_conv_match_the_formula():
    torch.manual_seed(0)
    resnet = timm_aconv.convert_convs(timm.create_model('resnet18', num_classes=4), sizes=[5], preserve=False)
    assert len(_group(resnet).layers) == 17  # 1x1 shortcuts skipped
    unet = timm_aconv.convert_convs(
        smp.Unet('resnet18', encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4), classes=2),
        sizes=[7],
        include=['encoder.conv1'],
    )
    for model, x in ((resnet, torch.randn(2, 3, 32, 32)), (unet, torch.randn(2, 3, 32, 32))):
        reference = copy.deepcopy(model)
        for layer in timm_aconv.adaptive_layers(reference):
            layer.forward = lambda inputs, layer=layer: layer._conv_forward(inputs, layer.product_kernel(), layer.bias)
        for got, want in zip(_output_and_grads(model, x), _output_and_grads(reference, x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_frozen_sigmas_or_weights_in_a_group():
    model = _mixed_model()
    model[2].sigma.requires_grad_(False)
    model[6].weight.requires_grad_(False)
    x = torch.randn(2, 3, 12, 12)
    output = model(x)
    output.sum().backward()
    assert model[2].sigma.grad is None and model[6].weight.grad is None
    assert model[2].weight.grad is not None and model[6].sigma.grad is not None
    torch.testing.assert_close(output, _formula_forward(model, x), rtol=1e-6, atol=1e-6)


def test_nothing_is_kept_across_a_cuda_graph_capture(monkeypatch):
    """While a CUDA stream captures, kernels kept from eager calls are not reused and the kernels computed are
    not reused after it (checked on the CPU with the probe patched)."""
    model = _mixed_model()
    x = torch.randn(1, 3, 12, 12)
    model(x)
    group = _group(model)
    computes = []
    original = group._compute
    monkeypatch.setattr(group, '_compute', lambda: computes.append(1) or original())
    monkeypatch.setattr(kernel_group_module, 'stream_capturing', lambda tensor: True)
    model(x)
    assert computes == [1]  # the kept kernels (made outside a capture) were not taken
    monkeypatch.setattr(kernel_group_module, 'stream_capturing', lambda tensor: False)
    model[:2](x)
    assert computes == [1, 1]  # nor those made inside one, after it


def test_compiled_group_has_no_graph_breaks_or_recompiles_and_matches_eager():
    from torch._dynamo.utils import counters

    model = _mixed_model()
    eager = copy.deepcopy(model)
    x = torch.randn(2, 3, 12, 12)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend='aot_eager')
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, eager)]
    for _ in range(3):
        for forward, optimizer in ((compiled, optimizers[0]), (eager, optimizers[1])):
            optimizer.zero_grad()
            forward(x).square().mean().backward()
            optimizer.step()
    assert not counters['graph_break'] and counters['stats']['unique_graphs'] == 1
    assert all(kernel is None for kernel in _group(model)._traced)  # every traced kernel taken
    for got, want in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_group_errors_and_ungrouped_layers():
    with pytest.raises(TypeError, match=r'model must be a torch\.nn\.Module, got object'):
        timm_aconv.group_adaptive_layers(object())
    assert timm_aconv.group_adaptive_layers(nn.Conv2d(1, 1, 3)) is None
    model = _mixed_model()
    timm_aconv.ungroup_adaptive_layers(model)
    assert _group(model) is None
    x = torch.randn(1, 3, 12, 12)
    torch.testing.assert_close(model(x), _formula_forward(model, x), rtol=1e-6, atol=1e-6)


def test_torch_func_and_torchscript_take_the_formula():
    model = _mixed_model(torch.float64)
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    sigma = model[10].sigma.detach()

    def loss(value):
        return torch.func.functional_call(model, {'10.sigma': value}, (x,)).square().sum()

    def formula_loss(value):
        return _formula_with_sigma(model, x, value).square().sum()

    torch.testing.assert_close(torch.func.grad(loss)(sigma), torch.func.grad(formula_loss)(sigma))
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), _formula_forward(model, x))


def _formula_with_sigma(model: nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    from timm_aconv.layers.envelope import normalized_envelope

    for module in model:
        if isinstance(module, AdaptiveConv2d):
            value = sigma if module is model[10] else module.sigma
            kernel = module.weight * normalized_envelope(value, None, module.grid_coordinates).unsqueeze(1)
            x = module._conv_forward(x, kernel, module.bias)
        else:
            x = module(x)
    return x


def test_functional_call_with_swapped_parameters_then_the_real_ones():
    model = _mixed_model()
    x = torch.randn(1, 3, 12, 12)
    sigma = torch.full((4,), 0.3, requires_grad=True)
    output = torch.func.functional_call(model, {'10.sigma': sigma}, (x,))
    (grad,) = torch.autograd.grad(output.sum(), sigma)
    (expected,) = torch.autograd.grad(_formula_with_sigma(model, x, sigma).sum(), sigma)
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), _formula_forward(model, x), rtol=1e-6, atol=1e-6)


class _HandBuilt(nn.Module):
    """A model of bare layers, built the way users write their own."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(AdaptiveConv2d(3, 4, 5, padding=2), nn.ReLU())
        self.blocks = nn.ModuleList([AdaptiveConv2d(4, 4, 3, padding=1) for _ in range(3)])
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.head(x)


def test_models_built_from_bare_layers_are_grouped_as_they_are_built():
    model = _HandBuilt()
    layers = list(timm_aconv.adaptive_layers(model))
    group = _group(model)
    assert group.layers == layers and all(layer._kernel_group is group for layer in layers)
    # wrappers and slices of grouped layers change nothing
    nn.ModuleDict(dict(model=model))
    first_two = model.blocks[:2]
    assert _group(model) is group and first_two[0]._kernel_group is group and len(group.layers) == 4
    # a replaced layer leaves the group; a new one joins
    removed = model.blocks[1]
    model.blocks[1] = nn.Conv2d(4, 4, 3, padding=1)
    assert removed._kernel_group is None and len(_group(model).layers) == 3
    model.blocks.append(AdaptiveConv2d(4, 4, 5, padding=2))
    assert (
        len(_group(model).layers) == 4
        and len({layer._kernel_group for layer in timm_aconv.adaptive_layers(model)}) == 1
    )
    x = torch.randn(2, 3, 8, 8)
    reference = copy.deepcopy(model)
    timm_aconv.ungroup_adaptive_layers(reference)
    for got, want in zip(_output_and_grads(model, x), _output_and_grads(reference, x), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # ungrouped by hand, a model stays so until grouped by hand
    timm_aconv.ungroup_adaptive_layers(model)
    model.head = nn.Conv2d(4, 2, 1)
    assert all(layer._kernel_group is None for layer in timm_aconv.adaptive_layers(model))


@pytest.mark.parametrize('grouped', [True, False], ids=['grouped', 'formula'])
def test_a_sigma_far_below_its_grid_gets_finite_gradients(grouped):
    """sigma = 0.02 on a 7×7 grid: the envelope's far cells underflow to 0 in float32, where the square root's
    derivative is infinite; the gradients stay finite (0 there) in the group and in the layer's own formula."""
    layer = AdaptiveConv2d(2, 3, 7, padding=3, sigma_init=0.02, sigma_bounds=(0.01, 7))
    assert float(layer.envelope().detach().min()) == pytest.approx(0.0, abs=1e-15)
    x = torch.randn(1, 2, 9, 9)
    output = layer(x) if grouped else layer._conv_forward(x, layer.product_kernel(), layer.bias)
    output.square().sum().backward()
    assert torch.isfinite(layer.sigma.grad).all() and torch.isfinite(layer.weight.grad).all()
    assert float(layer.sigma.grad.abs().sum()) > 0
