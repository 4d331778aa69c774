"""Every path of the adaptive layer's forward computes the definition ``conv2d(x, weight * envelope(sigma))``:
evaluation after every kind of parameter change, frozen layers, inference mode, ``torch.func``, ``torch.compile``,
autocast, memory formats, ``torch.export``, ONNX, the meta device, and the training path's gradients.
"""

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_aconv
from timm_aconv import AdaptiveConv2d, gaussian_envelope


def _layer(dtype=torch.float32, **kwargs) -> AdaptiveConv2d:
    torch.manual_seed(0)
    return AdaptiveConv2d(3, 6, 5, padding=2, dtype=dtype, **kwargs)


def _reference(layer: AdaptiveConv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's output from its product kernel, computed now by the layer alone."""
    kernel = layer.product_kernel().detach()
    definition = layer.weight.detach() * gaussian_envelope(layer.sigma.detach(), layer.grid_size)[:, None]
    torch.testing.assert_close(kernel, definition)  # the lean envelope is the paper's to float rounding
    return F.conv2d(x, kernel, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _eval(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x)


def _sgd_step(layer):
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(torch.randn(2, 3, 8, 8)).square().sum().backward()
    optimizer.step()


def _adam_fused_step(layer):
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, fused=True)
    layer(torch.randn(2, 3, 8, 8)).square().sum().backward()
    optimizer.step()


def _load_state_dict(layer):
    layer.load_state_dict(_layer(sigma_init=0.3).state_dict())


def _load_state_dict_assign(layer):
    other = _layer(sigma_init=0.3)
    with torch.no_grad():
        other.weight.mul_(-1)
    layer.load_state_dict(other.state_dict(), assign=True)


def _in_place_weight(layer):
    with torch.no_grad():
        layer.weight.mul_(2)


def _in_place_sigma(layer):
    with torch.no_grad():
        layer.sigma.fill_(0.7)


def _clamp(layer):
    with torch.no_grad():
        layer.sigma.mul_(100)  # far above the bound n
    layer.clamp_sigma_()


def _assign_data(layer):
    layer.weight.data = torch.randn_like(layer.weight)


def _assign_transposed_view(layer):
    # same storage address and version, new strides: only the stride in the key tells
    layer.weight.data = layer.weight.data.transpose(2, 3)


def _assign_data_twice(layer):
    # the second tensor could reuse the first one's freed address: the cache must not be fooled
    first = layer.weight.data.clone()
    layer.weight.data = torch.randn_like(first)
    layer.weight.data = first * 3


def _to_float64(layer):
    layer.to(torch.float64)


def _set_sigma_parameter(layer):
    layer.sigma = nn.Parameter(torch.full_like(layer.sigma, 0.2))


CHANGES = [
    _sgd_step,
    _adam_fused_step,
    _load_state_dict,
    _load_state_dict_assign,
    _in_place_weight,
    _in_place_sigma,
    _clamp,
    _assign_data,
    _assign_transposed_view,
    _assign_data_twice,
    _to_float64,
    _set_sigma_parameter,
]


@pytest.mark.parametrize('change', CHANGES, ids=lambda fn: fn.__name__.lstrip('_'))
def test_evaluation_follows_every_parameter_change(change):
    layer = _layer().eval()
    x = torch.randn(2, 3, 9, 9)
    before = _eval(layer, x)
    torch.testing.assert_close(before, _reference(layer, x), rtol=0, atol=0)
    change(layer)
    x = x.to(layer.weight.dtype)
    after = _eval(layer, x)
    if change is not _to_float64:
        assert not torch.allclose(after, before, atol=1e-3), 'the change should change the output'
    torch.testing.assert_close(after, _reference(layer, x), rtol=0, atol=0)


def test_evaluation_reuses_its_kernels_until_a_change_and_copies_start_without(monkeypatch):
    model = nn.Sequential(_layer(), nn.ReLU(), AdaptiveConv2d(6, 6, 3, padding=1)).eval()
    group = model[0]._kernel_group
    computes = []
    original = group._compute
    monkeypatch.setattr(group, '_compute', lambda: computes.append(1) or original())
    x = torch.randn(1, 3, 8, 8)
    for _ in range(3):
        _eval(model, x)
    assert computes == [1]  # one computation serves every evaluation
    _in_place_weight(model[2])
    _eval(model, x)
    assert computes == [1, 1]
    model(x)  # recording gradients: new kernels with a graph, each handed out once
    model(x)
    assert len(computes) == 4
    with torch.inference_mode():
        _eval(model, x)
        _eval(model, x)
    assert len(computes) == 5
    copied = copy.deepcopy(model)
    assert copied[0]._kernel_group._entries is None
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False)[0]._kernel_group._entries is None


def test_frozen_layer_still_passes_input_gradients():
    layer = _layer().requires_grad_(False)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    layer(x).sum().backward()  # grad enabled, kernel needs none: computed without a graph
    reference_x = x.detach().clone().requires_grad_(True)
    _reference(layer, reference_x).sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad, rtol=0, atol=0)


def test_training_forward_after_evaluation_gives_gradients():
    layer = _layer()
    _eval(layer, torch.randn(1, 3, 8, 8))  # kernels computed without a graph
    layer(torch.randn(1, 3, 8, 8)).sum().backward()
    assert layer.weight.grad is not None and layer.sigma.grad is not None and layer.sigma.grad.abs().sum() > 0


def test_inference_mode_then_frozen_grad_mode():
    layer = _layer().requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = layer(x)
    # a kernel computed under inference_mode is an inference tensor: it must not reach autograd
    x_grad = x.clone().requires_grad_(True)
    output = layer(x_grad)
    output.sum().backward()
    torch.testing.assert_close(output.detach(), expected, rtol=0, atol=0)
    with torch.inference_mode():
        layer_made_in_inference = _layer()  # parameters that are inference tensors (no version counters)
        torch.testing.assert_close(layer_made_in_inference(x), _reference(layer_made_in_inference, x))


def test_vmap_over_weights_without_grad():
    layer = _layer()
    weights = torch.randn(2, *layer.weight.shape)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():  # batched weights: each layer computes its own kernel
        outputs = torch.func.vmap(lambda weight: torch.func.functional_call(layer, {'weight': weight}, (x,)))(weights)
        for weight, output in zip(weights, outputs):
            layer.weight.copy_(weight)
            torch.testing.assert_close(output, _reference(layer, x))


def _small_cnn(kernel_size: int = 5) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    return timm_aconv.convert_convs(model, sizes=kernel_size, preserve=False)


@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_torch_compile_has_no_graph_breaks(train):
    model = _small_cnn().train(train)  # converted: its layers grouped
    x = torch.randn(2, 3, 16, 16)
    model(x)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16], ids=['bf16', 'fp16'])
def test_autocast_matches_float32_and_trains(dtype):
    model = _small_cnn()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    with torch.autocast('cpu', dtype=dtype):
        output = model(x)
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=0.05, atol=0.05)
    output.float().sum().backward()
    for layer in timm_aconv.adaptive_layers(model):
        assert layer.sigma.grad.dtype == torch.float32 and torch.isfinite(layer.sigma.grad).all()
    with torch.no_grad(), torch.autocast('cpu', dtype=dtype):  # cached kernel under autocast
        torch.testing.assert_close(model.eval()(x).float(), model(x).float(), rtol=0, atol=0)


def test_channels_last_matches_and_keeps_memory_format():
    model = _small_cnn()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    x_last = x.contiguous(memory_format=torch.channels_last)
    first = next(timm_aconv.adaptive_layers(model))
    assert first.product_kernel().is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x_last), expected, rtol=1e-5, atol=1e-5)
    assert first(x_last).is_contiguous(memory_format=torch.channels_last)
    model(x_last).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x_last), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # the TorchScript exporter needs no onnxscript
def test_onnx_export_of_fused_model(tmp_path):
    onnx = pytest.importorskip('onnx')
    model = timm_aconv.fuse_convs(_small_cnn().eval())
    assert not any(isinstance(module, AdaptiveConv2d) for module in model.modules())
    path = tmp_path / 'fused.onnx'
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, input_names=['image'])
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    assert sum(node.op_type == 'Conv' for node in graph.node) == 3


# ------------------------------------------------------------------ the lean training path
def _definition_kernel(weight: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``W ∘ U(sigma)`` through autograd of the paper's formula (:func:`gaussian_envelope`)."""
    return weight * gaussian_envelope(sigma, weight.shape[-1])[:, None]


def _definition_grads(layer: AdaptiveConv2d, x: torch.Tensor, grad_out: torch.Tensor):
    weight, sigma = layer.weight.detach().requires_grad_(True), layer.sigma.detach().requires_grad_(True)
    bias = layer.bias.detach().requires_grad_(True)
    output = layer._conv_forward(x, _definition_kernel(weight, sigma), bias)
    return (output, *torch.autograd.grad(output, (weight, sigma, bias), grad_out))


@pytest.mark.parametrize('dtype,tolerance', [(torch.float64, 1e-10), (torch.float32, 2e-5)], ids=['f64', 'f32'])
@pytest.mark.parametrize(
    'kwargs',
    [dict(), dict(groups=3, stride=2), dict(channels_last=True)],
    ids=['default', 'groups-stride', 'channels_last'],
)
def test_training_outputs_and_gradients_equal_the_formula(dtype, tolerance, kwargs):
    """The closed-form backward (W, sigma, bias) and the softmax envelope against autograd of eq. 11/21."""
    kwargs = dict(kwargs)
    channels_last = kwargs.pop('channels_last', False)
    torch.manual_seed(0)
    layer = AdaptiveConv2d(3, 6, 7, padding=3, dtype=dtype, sigma_init=(1 / 7, 2.0), **kwargs)
    x = torch.randn(2, 3, 9, 9, dtype=dtype)
    if channels_last:
        layer, x = layer.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    output = layer(x)
    grad_out = torch.randn_like(output)
    output.backward(grad_out)
    expected_output, grad_weight, grad_sigma, grad_bias = _definition_grads(layer, x, grad_out)
    close = dict(rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(output, expected_output, **close)
    torch.testing.assert_close(layer.weight.grad, grad_weight, **close)
    torch.testing.assert_close(layer.sigma.grad, grad_sigma, **close)
    torch.testing.assert_close(layer.bias.grad, grad_bias, **close)


def test_input_gradient_penalty_and_second_sigma_derivative_match_the_definition():
    """Double backward through the convolution (a penalty on input gradients) reaches W and sigma once, and
    the sigma gradient differentiates again (the training path is native operations), both as the
    definition's autograd does."""
    torch.manual_seed(0)
    layer = AdaptiveConv2d(2, 3, 5, padding=2, dtype=torch.float64)
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    grad_x.square().sum().backward()

    weight, sigma = layer.weight.detach().requires_grad_(True), layer.sigma.detach().requires_grad_(True)
    x_ref = x.detach().requires_grad_(True)
    output = layer._conv_forward(x_ref, _definition_kernel(weight, sigma), layer.bias.detach())
    (grad_x_ref,) = torch.autograd.grad(output.square().sum(), x_ref, create_graph=True)
    grad_x_ref.square().sum().backward()
    torch.testing.assert_close(layer.weight.grad, weight.grad)
    torch.testing.assert_close(layer.sigma.grad, sigma.grad)

    (grad_sigma,) = torch.autograd.grad(layer(x).sum(), layer.sigma, create_graph=True)
    (second,) = torch.autograd.grad(grad_sigma.square().sum(), layer.sigma)
    output = layer._conv_forward(x_ref, _definition_kernel(weight, sigma), layer.bias.detach())
    (grad_sigma_ref,) = torch.autograd.grad(output.sum(), sigma, create_graph=True)
    (second_ref,) = torch.autograd.grad(grad_sigma_ref.square().sum(), sigma)
    torch.testing.assert_close(second, second_ref)


def test_backward_inside_autocast_keeps_the_sigma_gradient_in_float32():
    layer = _layer()
    x = torch.randn(2, 3, 8, 8)
    grads = []
    for backward_in_autocast in (False, True):
        layer.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            output = layer(x).float().square().sum()
            if backward_in_autocast:
                output.backward()
        if not backward_in_autocast:
            output.backward()
        grads.append(layer.sigma.grad.clone())
    assert grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


def test_torch_func_grad_and_vmap_over_sigmas():
    torch.manual_seed(0)
    layer = AdaptiveConv2d(2, 3, 5, padding=2, dtype=torch.float64)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    weight = layer.weight.detach()

    def loss(sigma):
        return torch.func.functional_call(layer, {'sigma': sigma}, (x,)).square().sum()

    def definition_loss(sigma):
        return layer._conv_forward(x, _definition_kernel(weight, sigma), layer.bias.detach()).square().sum()

    sigmas = torch.tensor([[0.2, 0.4, 0.9], [1.5, 0.3, 0.25]], dtype=torch.float64)
    torch.testing.assert_close(torch.func.grad(loss)(sigmas[0]), torch.func.grad(definition_loss)(sigmas[0]))
    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(loss))(sigmas), torch.func.vmap(torch.func.grad(definition_loss))(sigmas)
    )


@pytest.mark.parametrize('grad_mode', [True, False], ids=['train-grad', 'no-grad'])
def test_torch_export_matches_eager(grad_mode):
    model = _small_cnn().train(grad_mode)
    x = torch.randn(2, 3, 16, 16)
    with torch.set_grad_enabled(grad_mode):
        program = torch.export.export(model, (x,))
        torch.testing.assert_close(program.module()(x), model(x))


def test_grid_buffer_follows_the_module_and_stays_out_of_the_state_dict():
    layer = AdaptiveConv2d(3, 4, 5, device='meta')
    assert 'grid_coordinates' not in layer.state_dict() and layer.grid_coordinates.is_meta
    x = torch.empty(1, 3, 8, 8, device='meta', requires_grad=True)
    layer(x).sum().backward()  # the training path (and its backward) on the meta device
    assert layer.sigma.grad.shape == (4,) and layer.weight.grad.is_meta
    layer.to_empty(device='cpu')  # uninitialized memory: refilled
    reference = timm_aconv.layers.envelope.grid_coordinates((5, 5), torch.device('cpu'), torch.float32)
    torch.testing.assert_close(layer.grid_coordinates, reference, rtol=0, atol=0)
    layer.to(torch.float64)
    assert layer.grid_coordinates.dtype == torch.float64
    torch.testing.assert_close(layer.grid_coordinates, reference.double(), rtol=0, atol=0)
