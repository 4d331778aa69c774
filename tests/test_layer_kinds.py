"""Every kind of adaptive layer (1-D, 2-D, 3-D; 'spherical', 'diag', 'full'; square or rectangular grids) against
the paper's formula written out, in every dtype and across the whole aperture range, with property tests
(hypothesis) that draw kinds, grids, options, dtypes and apertures.

The reference is eq. 11 with the normalization of eq. 21 for any covariance, computed here by hand in float64:
``U_q(g) ∝ exp(-sum_a d'_a² / (2 sigma_qa² + 1e-8))`` (d' the offsets rotated by theta for 'full'), scaled so
that ``sum U² =`` the number of grid points.
"""

import math

import pytest
import timm
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import timm_aconv
from timm_aconv import AdaptiveConv1d, AdaptiveConv2d, AdaptiveConv3d

LAYERS = {1: AdaptiveConv1d, 2: AdaptiveConv2d, 3: AdaptiveConv3d}
CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
# (dims, kernel_size, covariance_type): every kind the package offers
KINDS = [
    (1, 7, 'spherical'),
    (1, 7, 'diag'),
    (2, 7, 'spherical'),
    (2, (7, 3), 'spherical'),
    (2, 7, 'diag'),
    (2, (5, 3), 'diag'),
    (2, 7, 'full'),
    (3, 5, 'spherical'),
    (3, (5, 3, 3), 'diag'),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def reference_envelope(sigma: torch.Tensor, theta, sides) -> torch.Tensor:
    """Eq. 11 and eq. 21 for any covariance, filter by filter, in float64."""
    sigma, ndim = sigma.detach().double(), len(sides)
    sigma = sigma[:, None].expand(-1, ndim) if sigma.dim() == 1 else sigma
    axes = [
        torch.linspace(0, 1, side, dtype=torch.float64) - 0.5 if side > 1 else torch.zeros(1, dtype=torch.float64)
        for side in sides
    ]
    offsets = torch.stack(torch.meshgrid(*axes, indexing='ij')).double()  # (ndim, *sides)
    envelopes = []
    for index in range(sigma.shape[0]):
        rotated = offsets
        if theta is not None:
            cos, sin = math.cos(float(theta[index])), math.sin(float(theta[index]))
            rotated = torch.stack([cos * offsets[0] + sin * offsets[1], cos * offsets[1] - sin * offsets[0]])
        exponent = sum(rotated[a].square() / (2 * sigma[index, a] ** 2 + 1e-8) for a in range(ndim))
        raw = torch.exp(-(exponent - exponent.min()))  # the same function, without underflow at the centre
        envelopes.append(raw * math.sqrt(raw.numel() / float(raw.square().sum())))
    return torch.stack(envelopes)


def make_layer(dims, kernel_size, covariance_type, dtype=torch.float32, sigma=None, theta=None, **options):
    torch.manual_seed(0)
    layer = LAYERS[dims](3, 4, kernel_size, padding='same', bias=True, covariance_type=covariance_type, **options)
    with torch.no_grad():
        if sigma is not None:
            layer.sigma.copy_(torch.as_tensor(sigma, dtype=layer.sigma.dtype).expand_as(layer.sigma))
        if theta is not None and layer.theta is not None:
            layer.theta.copy_(torch.as_tensor(theta, dtype=layer.theta.dtype).expand_as(layer.theta))
    return layer.to(dtype)


def finite_step(layer, dtype) -> bool:
    """One forward and backward: finite outputs and gradients in the input, W, sigma, theta and bias."""
    x = torch.randn(2, 3, *([9] * (layer.weight.dim() - 2))).to(dtype).requires_grad_()
    output = layer(x)
    output.float().square().mean().backward()
    grads = [x.grad] + [param.grad for param in layer.parameters()]
    return bool(torch.isfinite(output).all()) and all(bool(torch.isfinite(grad).all()) for grad in grads)


@pytest.mark.parametrize('kind', KINDS, ids=lambda kind: f'{kind[0]}d-{kind[1]}-{kind[2]}')
@pytest.mark.parametrize('dtype', DTYPES, ids=lambda dtype: str(dtype).split('.')[-1])
def test_finite_outputs_and_gradients_from_1e3_to_n(kind, dtype):
    """The grid the issue measured (93 of 196 cases non-finite before one envelope served every kind), and more."""
    dims, kernel_size, covariance_type = kind
    largest = max(kernel_size) if isinstance(kernel_size, tuple) else kernel_size
    for sigma in (1e-3, 5e-3, 0.02, 0.05, 1 / largest, 0.5, 1.0, float(largest)):
        layer = make_layer(dims, kernel_size, covariance_type, dtype, sigma=sigma, theta=0.7)
        if covariance_type != 'spherical':  # one axis at the bound, the other wide
            with torch.no_grad():
                layer.sigma[:, -1] = float(largest)
        assert finite_step(layer, dtype), (kind, dtype, sigma)


def test_the_learned_size_setting_with_a_diagonal_envelope_trains_20_steps_with_finite_apertures():
    torch.manual_seed(0)
    model = timm.create_model('aconv_resnet20', covariance_type='diag', sigma_init=(0.05, 0.2), sigma_bounds=(0.05, 7))
    optimizer = torch.optim.SGD(timm_aconv.param_groups(model, lr=0.1), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(layer.sigma.grad).all() for layer in timm_aconv.adaptive_layers(model))
        optimizer.step()
    sigmas = torch.cat([layer.sigma.detach().flatten() for layer in timm_aconv.adaptive_layers(model)])
    assert torch.isfinite(sigmas).all() and sigmas.min() >= 0.05 and torch.isfinite(loss)


@st.composite
def layer_cases(draw):
    """A layer kind, a grid, conv options, and apertures anywhere from 1e-3 to n (below the clamp range too: a
    loaded checkpoint may hold them)."""
    dims = draw(st.sampled_from([1, 2, 3]))
    covariance_type = draw(st.sampled_from(['spherical', 'diag', 'full'] if dims == 2 else ['spherical', 'diag']))
    sides = tuple(draw(st.sampled_from([1, 3, 5, 7] if dims < 3 else [1, 3, 5])) for _ in range(dims))
    if max(sides) < 3:
        sides = (3, *sides[1:])
    shape = (4,) if covariance_type == 'spherical' else (4, dims)
    log_sigma = draw(
        st.lists(st.floats(math.log(1e-3), math.log(max(sides))), min_size=math.prod(shape), max_size=math.prod(shape))
    )
    sigma = torch.tensor(log_sigma, dtype=torch.float64).exp().view(shape)
    theta = torch.tensor(draw(st.lists(st.floats(-math.pi, math.pi), min_size=4, max_size=4)), dtype=torch.float64)
    options = dict(
        stride=draw(st.sampled_from([1, 2])),
        dilation=draw(st.sampled_from([1, 2])),
        groups=draw(st.sampled_from([1, 2])),
        padding_mode=draw(st.sampled_from(['zeros', 'reflect', 'circular'])),
    )
    return dims, sides, covariance_type, sigma, theta, options


def _build(case, dtype=torch.float64):
    dims, sides, covariance_type, sigma, theta, options = case
    torch.manual_seed(0)
    padding = 'same' if options['stride'] == 1 else 2
    layer = LAYERS[dims](
        4, 4, sides, padding=padding, bias=True, covariance_type=covariance_type, dtype=torch.float64, **options
    )
    with torch.no_grad():
        layer.sigma.copy_(sigma)
        if layer.theta is not None:
            layer.theta.copy_(theta)
    return layer.to(dtype)


@settings(max_examples=40, deadline=None)
@given(layer_cases())
def test_property_every_kind_equals_the_formula_with_finite_gradients(case):
    dims, sides, covariance_type, sigma, theta, _ = case
    layer = _build(case)
    expected_envelope = reference_envelope(sigma, theta if covariance_type == 'full' else None, sides)
    torch.testing.assert_close(layer.envelope(), expected_envelope, rtol=1e-9, atol=1e-12)
    x = torch.randn(2, 4, *([11] * dims), dtype=torch.float64, requires_grad=True)
    output = layer(x)
    expected = layer._conv_forward(x, layer.weight * expected_envelope.unsqueeze(1), layer.bias)
    torch.testing.assert_close(output, expected, rtol=1e-9, atol=1e-12)
    output.square().mean().backward()
    for tensor in (x, *layer.parameters()):
        assert torch.isfinite(tensor.grad).all()


@settings(max_examples=20, deadline=None)
@given(layer_cases(), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_property_lower_precision_is_finite_and_near_float64(case, dtype):
    reference = _build(case)
    layer = _build(case, dtype)
    x = torch.randn(2, 4, *([11] * case[0]), dtype=torch.float64)
    output = layer(x.to(dtype).requires_grad_())
    output.float().square().mean().backward()
    assert all(torch.isfinite(param.grad).all() for param in layer.parameters())
    with torch.no_grad():
        expected = reference(x)
    tolerance = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    scale = float(expected.abs().max()) + 1e-6
    assert float((output.detach().double() - expected).abs().max()) <= tolerance * scale


@settings(max_examples=20, deadline=None)
@given(layer_cases())
def test_property_fuse_equals_the_layer(case):
    layer = _build(case).eval()
    x = torch.randn(2, 4, *([11] * case[0]), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer.fuse()(x), layer(x), rtol=1e-12, atol=1e-12)
