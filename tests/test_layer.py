"""AdaptiveConv2d: construction, every Conv2d option, gradients, serialization, scripting."""

import io

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_aconv
from timm_aconv import AdaptiveConv2d, gaussian_envelope

# (constructor kwargs, input channels) covering every nn.Conv2d option
CONV_OPTIONS = [
    pytest.param(dict(), 4, id='default'),
    pytest.param(dict(stride=2, padding=1), 4, id='stride2'),
    pytest.param(dict(dilation=2, padding=2), 4, id='dilation2'),
    pytest.param(dict(groups=2, padding=1), 4, id='groups2'),
    pytest.param(dict(groups=4, padding='same'), 4, id='depthwise-same'),
    pytest.param(dict(padding='valid'), 4, id='valid'),
    pytest.param(dict(padding=(2, 1)), 4, id='tuple-padding'),
    pytest.param(dict(padding=2, padding_mode='reflect'), 4, id='reflect'),
    pytest.param(dict(padding=1, padding_mode='circular'), 4, id='circular'),
    pytest.param(dict(padding=1, padding_mode='replicate', stride=(2, 1)), 4, id='replicate-stride21'),
    pytest.param(dict(bias=False, padding='same', dilation=(1, 2)), 4, id='nobias-same-dilation12'),
]


def _layer(kernel_size=5, out_channels=4, in_channels=4, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    return AdaptiveConv2d(in_channels, out_channels, kernel_size, dtype=dtype, **kwargs)


@pytest.mark.parametrize('kwargs,in_channels', CONV_OPTIONS)
def test_equals_conv2d_with_product_kernel(kwargs, in_channels):
    layer = _layer(in_channels=in_channels, **kwargs)
    x = torch.randn(2, in_channels, 11, 12, dtype=torch.float64)
    reference = nn.Conv2d(in_channels, 4, 5, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        reference.weight.copy_(layer.weight * gaussian_envelope(layer.sigma, 5)[:, None])
        if layer.bias is not None:
            reference.bias.copy_(layer.bias)
    torch.testing.assert_close(layer(x), reference(x), rtol=1e-12, atol=1e-12)
    # the same with F.conv2d and the exposed product kernel (zeros padding only)
    if kwargs.get('padding_mode', 'zeros') == 'zeros':
        expected = F.conv2d(
            x, layer.product_kernel(), layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups
        )
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    'kwargs,in_channels',
    [
        p
        for p in CONV_OPTIONS
        if p.id in ('default', 'stride2', 'dilation2', 'groups2', 'depthwise-same', 'reflect', 'nobias-same-dilation12')
    ],
)
def test_gradcheck_weight_bias_sigma_input(kwargs, in_channels):
    layer = _layer(kernel_size=3, in_channels=in_channels, sigma_init=(0.2, 0.6), **kwargs)
    x = torch.randn(1, in_channels, 6, 5, dtype=torch.float64, requires_grad=True)
    params = [layer.weight, layer.sigma] + ([layer.bias] if layer.bias is not None else [])

    def run(x, *values):
        state = dict(weight=values[0], sigma=values[1])
        if len(values) > 2:
            state['bias'] = values[2]
        return torch.func.functional_call(layer, state, (x,))

    assert torch.autograd.gradcheck(run, (x, *params))


@pytest.mark.parametrize('n', [3, 5, 7, 9])
@pytest.mark.parametrize('dilation', [1, 2])
def test_same_padding_keeps_spatial_size(n, dilation):
    layer = AdaptiveConv2d(3, 6, n, padding='same', dilation=dilation)
    assert layer(torch.randn(2, 3, 17, 13)).shape == (2, 6, 17, 13)


def test_parameters_state_dict_and_sigma_init():
    layer = AdaptiveConv2d(3, 5, 7, sigma_init=(0.1, 0.5))
    assert isinstance(layer, nn.Conv2d)
    assert list(layer.state_dict()) == ['weight', 'bias', 'sigma']
    assert list(AdaptiveConv2d(3, 5, 7, bias=False).state_dict()) == ['weight', 'sigma']
    assert layer.sigma.shape == (5,) and layer.sigma.requires_grad
    torch.testing.assert_close(layer.sigma.detach(), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert layer.sigma_bounds == (1 / 7, 7.0)
    constant = AdaptiveConv2d(3, 5, 3, sigma_init=0.25, sigma_bounds=(0.2, 2))
    torch.testing.assert_close(constant.sigma.detach(), torch.full((5,), 0.25))
    assert constant.sigma_bounds == (0.2, 2.0)
    assert AdaptiveConv2d(3, 5, (9, 9)).kernel_size == (9, 9)


def test_factory_kwargs_and_meta_device():
    layer = AdaptiveConv2d(3, 4, 5, dtype=torch.float64)
    assert layer.weight.dtype == layer.sigma.dtype == torch.float64
    meta = AdaptiveConv2d(3, 4, 5, device='meta')
    assert meta.sigma.is_meta and meta.weight.is_meta
    assert 'sigma_bounds' in repr(meta)
    assert meta(torch.empty(1, 3, 8, 8, device='meta')).shape == (1, 4, 4, 4)
    meta.to_empty(device='cpu')
    meta.reset_parameters()
    torch.testing.assert_close(meta.sigma.detach(), torch.linspace(0.1, 0.5, 4))


@pytest.mark.parametrize('kernel_size', [4, 1, 2, 0, -3, (4, 3), (1, 1), (3, 5, 5), (5, 5, 5), 2.5, True])
def test_bad_kernel_size(kernel_size):
    with pytest.raises(ValueError, match=r'kernel_size must be (an odd integer >= 3|square|an odd int or 2 odd sides)'):
        AdaptiveConv2d(3, 4, kernel_size)


@pytest.mark.parametrize('covariance_type', ['spherical', 'diag', 'full'])
def test_rectangular_and_elliptic_layers_are_their_own_formula(covariance_type):
    # a (7, 3) grid or a non-spherical envelope: the layer convolves with W ∘ U of its formula, gets every
    # gradient, and scripts
    layer = AdaptiveConv2d(3, 4, (7, 3), padding='same', covariance_type=covariance_type)
    assert not layer.isotropic and layer.grid_size == 7
    x = torch.randn(2, 3, 9, 9)
    expected = F.conv2d(x, layer.product_kernel(), layer.bias, padding='same')
    output = layer(x)
    torch.testing.assert_close(output, expected)
    output.sum().backward()
    envelope = layer.envelope()
    assert envelope.shape == (4, 7, 3)
    torch.testing.assert_close(envelope.square().sum((1, 2)), torch.full((4,), 21.0))
    assert layer.sigma.grad.shape == layer.sigma.shape and layer.weight.grad is not None
    keys = ['weight', 'bias', 'sigma'] + (['theta'] if covariance_type == 'full' else [])
    assert list(layer.state_dict()) == keys
    layer.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)
        torch.testing.assert_close(torch.jit.script(layer)(x), expected)


def test_covariance_type_errors_name_the_allowed_values():
    with pytest.raises(
        ValueError, match="covariance_type must be one of 'spherical', 'diag', 'full' for AdaptiveConv2d"
    ):
        AdaptiveConv2d(3, 4, 7, covariance_type='tied')
    with pytest.raises(ValueError, match=r"'full', a rotated ellipse, is 2-D only"):
        timm_aconv.AdaptiveConv3d(3, 4, 3, covariance_type='full')
    with pytest.raises(ValueError, match=r"sigma_bounds of a 'diag' layer must be a \(low, high\) pair"):
        AdaptiveConv2d(3, 4, 7, covariance_type='diag', sigma_bounds=[(0.1, 1), (0.1, 1), (0.1, 1)])


@pytest.mark.parametrize(
    'sigma_init,match',
    [
        (0.0, 'sigma_init must be positive'),
        (-0.1, 'sigma_init must be positive'),
        ((0.5, 0.1), 'low <= high'),
        ((0.1, 0.2, 0.3), 'sigma_init must be a positive number or a'),
    ],
)
def test_bad_sigma_init(sigma_init, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveConv2d(3, 4, 5, sigma_init=sigma_init)


@pytest.mark.parametrize('sigma_bounds', [(1.0, 0.5), (0.0, 1.0), (0.5, 0.5), (1.0,), 3.0])
def test_bad_sigma_bounds(sigma_bounds):
    with pytest.raises(ValueError, match='sigma_bounds must'):
        AdaptiveConv2d(3, 4, 5, sigma_bounds=sigma_bounds)


def test_clamp_sigma_and_extra_repr():
    layer = AdaptiveConv2d(3, 4, 5, sigma_init=(0.01, 9.0))
    text = repr(layer)
    assert 'kernel_size=(5, 5)' in text and 'sigma=[0.01, 9]' in text and 'sigma_bounds=(0.2, 5)' in text
    layer.clamp_sigma_()
    torch.testing.assert_close(layer.sigma.detach()[[0, -1]], torch.tensor([0.2, 5.0]))
    assert 'sigma=[0.2, 5]' in repr(layer)


def test_gradients_reach_weight_and_sigma():
    layer = AdaptiveConv2d(3, 4, 5, padding=2)
    layer(torch.randn(2, 3, 8, 8)).square().mean().backward()
    assert layer.weight.grad.abs().sum() > 0 and layer.sigma.grad.abs().sum() > 0 and layer.bias.grad is not None


def test_fuse_returns_plain_conv_with_identical_outputs():
    layer = _layer(stride=2, padding=2, dilation=1, groups=2).eval()
    fused = layer.fuse()
    assert type(fused) is nn.Conv2d and not fused.training
    assert (fused.stride, fused.padding, fused.groups) == (layer.stride, layer.padding, layer.groups)
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(fused(x), layer(x), rtol=0, atol=0)
    # timm's reparameterize_model picks up the fuse() method
    model = nn.Sequential(_layer(padding=2), nn.ReLU())
    reparameterized = timm.utils.reparameterize_model(model)
    assert type(reparameterized[0]) is nn.Conv2d
    torch.testing.assert_close(reparameterized(x), model(x), rtol=0, atol=0)


def _small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        AdaptiveConv2d(3, 8, 5, padding='same'),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        AdaptiveConv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def test_state_dict_round_trip_weights_only():
    model = _small_model()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert {'0.sigma', '3.sigma', '0.weight', '0.bias', '3.weight'} <= set(state)
    other = _small_model()
    with torch.no_grad():
        for module in other.modules():
            if isinstance(module, AdaptiveConv2d):
                module.sigma.fill_(2.0)
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(other(x), model(x))
    other.load_state_dict(state)
    torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_torchscript_forward_matches_eager():
    model = _small_model()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(scripted(x), model(x))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)  # the same envelope arithmetic
    # TorchScript trains through autograd of the envelope, eager through the closed-form backward
    scripted(x).square().sum().backward()
    script_grads = [param.grad.clone() for param in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    for script_grad, param in zip(script_grads, model.parameters()):
        torch.testing.assert_close(script_grad, param.grad, rtol=1e-4, atol=1e-6)


def test_torch_compile_forward_matches_eager():
    model = _small_model()
    compiled = torch.compile(model, backend='aot_eager')
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(compiled(x), model(x))
