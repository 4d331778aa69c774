"""The normalized Gaussian envelope against the paper's formulas (section 3.2-3.3)."""

import math

import pytest
import torch

from timm_aconv import AdaptiveConv2d, centre_energy_fraction, effective_kernel_size, gaussian_envelope
from timm_aconv.layers.envelope import envelope_derivatives, grid_coordinates, normalized_envelope


def _sigmas(n):
    """Apertures spanning the clamp range [1/n, n], log-spaced."""
    return torch.logspace(math.log10(1 / n), math.log10(n), 25, dtype=torch.float64)


@pytest.mark.parametrize('n', [3, 5, 7, 9])
def test_normalization_sum_of_squares_is_n_squared(n):
    envelope = gaussian_envelope(_sigmas(n), n)
    assert envelope.shape == (25, n, n)
    torch.testing.assert_close(envelope.square().sum(dim=(1, 2)), torch.full((25,), float(n * n), dtype=torch.float64))


def test_reference_values_3x3():
    """n=3, sigma=0.5: grid (0, .5, 1)², centre (.5, .5) → squared distances 0, .25 (edges), .5 (corners)."""
    envelope = gaussian_envelope(torch.tensor([0.5], dtype=torch.float64), 3)[0]
    two_var = 2 * 0.5**2 + 1e-8
    centre, edge, corner = 1.0, math.exp(-0.25 / two_var), math.exp(-0.5 / two_var)
    scale = 3 / math.sqrt(centre**2 + 4 * edge**2 + 4 * corner**2)
    expected = scale * torch.tensor(
        [[corner, edge, corner], [edge, centre, edge], [corner, edge, corner]], dtype=torch.float64
    )
    torch.testing.assert_close(envelope, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize('n', [3, 5, 7, 9])
def test_peaks_at_centre_and_widens_with_sigma(n):
    envelope = gaussian_envelope(_sigmas(n), n)
    flat = envelope.flatten(1)
    centre = (n // 2) * n + n // 2
    assert (flat.argmax(dim=1) == centre).all()
    # the centre's share of the (fixed) energy n² falls as sigma grows; the corner's rises
    centre_value = envelope[:, n // 2, n // 2]
    corner_value = envelope[:, 0, 0]
    assert (centre_value[1:] < centre_value[:-1]).all()
    assert (corner_value[1:] > corner_value[:-1]).all()


def _analytic_grad(sigma: float, n: int) -> torch.Tensor:
    """d U / d sigma through the normalization, by hand.

    Unnormalized Gaussian (eq. 11): U0 = exp(-d² / (2σ² + ε)); its derivative (eq. 12 without
    the normalizer) is dU0/dσ = U0 · d² · 4σ / (2σ² + ε)² (= U0 · d² / σ³ for ε = 0).
    Normalization (eq. 21): U = s U0 with s = n / sqrt(Σ U0²), so
    dU/dσ = s dU0/dσ + U0 ds/dσ, ds/dσ = -n (Σ U0²)^(-3/2) Σ U0 dU0/dσ.
    """
    coords = torch.tensor([k / (n - 1) for k in range(n)], dtype=torch.float64)
    sq_distance = (coords[:, None] - 0.5) ** 2 + (coords[None, :] - 0.5) ** 2
    two_var = 2 * sigma**2 + 1e-8
    raw = torch.exp(-sq_distance / two_var)
    raw_grad = raw * sq_distance * 4 * sigma / two_var**2
    energy = raw.square().sum()
    scale = n / energy.sqrt()
    scale_grad = -n * energy**-1.5 * (raw * raw_grad).sum()
    return scale * raw_grad + raw * scale_grad


@pytest.mark.parametrize('n', [3, 5, 9])
@pytest.mark.parametrize('sigma', [0.15, 0.5, 2.0])
def test_sigma_derivative_matches_closed_form(n, sigma):
    sigma_param = torch.tensor([sigma], dtype=torch.float64, requires_grad=True)
    envelope = gaussian_envelope(sigma_param, n)[0]
    autograd_grad = torch.stack(
        [
            torch.autograd.grad(envelope[row, column], sigma_param, retain_graph=True)[0][0]
            for row in range(n)
            for column in range(n)
        ]
    ).reshape(n, n)
    torch.testing.assert_close(autograd_grad, _analytic_grad(sigma, n), rtol=1e-9, atol=1e-12)
    # and the closed form against a central finite difference
    step = 1e-6
    finite = (
        gaussian_envelope(torch.tensor([sigma + step], dtype=torch.float64), n)[0]
        - gaussian_envelope(torch.tensor([sigma - step], dtype=torch.float64), n)[0]
    ) / (2 * step)
    torch.testing.assert_close(finite, _analytic_grad(sigma, n), rtol=1e-5, atol=1e-7)


def test_envelope_gradcheck():
    sigma = torch.tensor([0.12, 0.3, 1.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: gaussian_envelope(s, 5), (sigma,))


@pytest.mark.parametrize('n', [5, 7, 9])
def test_theorem_3_1_mean_variance_is_preserved(n):
    """MVar[W ∘ U] == MVar[W] with the normalized envelope; not without the normalization."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.rand(256, 64, n, n, generator=generator, dtype=torch.float64) * 2 - 1
    mvar_weight = weight.var(dim=(0, 1)).mean()
    for sigma in (1 / n, 0.3, 1.0, float(n)):
        sigma_vector = torch.full((256,), sigma, dtype=torch.float64)
        envelope = gaussian_envelope(sigma_vector, n)
        mvar_product = (weight * envelope[:, None]).var(dim=(0, 1)).mean()
        assert mvar_product / mvar_weight == pytest.approx(1.0, abs=0.02), sigma
    # the unnormalized envelope U0 shrinks the variance for narrow apertures (the paper's Figure 3)
    raw = torch.exp(-grid_coordinates((n, n), dtype=torch.float64).square().sum(0) / (2 * (1 / n) ** 2))
    assert (weight * raw).var(dim=(0, 1)).mean() / mvar_weight < 0.2


def test_layer_product_kernel_variance_matches_weight_variance():
    layer = AdaptiveConv2d(64, 256, 7, sigma_init=(0.15, 3.0), dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(-1, 1)
    with torch.no_grad():
        ratio = layer.product_kernel().var(dim=(0, 1)).mean() / layer.weight.var(dim=(0, 1)).mean()
    assert float(ratio) == pytest.approx(1.0, abs=0.03)


def test_centre_energy_fraction_and_effective_size():
    kernel = torch.zeros(2, 3, 7, 7)
    kernel[..., 3, 3] = 1.0
    assert centre_energy_fraction(kernel) == [1.0, 1.0, 1.0, 1.0]
    assert effective_kernel_size(kernel) == 1
    kernel[..., 0, 0] = 1.0  # half of the energy in a corner
    assert centre_energy_fraction(kernel) == [0.5, 0.5, 0.5, 1.0]
    assert effective_kernel_size(kernel, energy=0.5) == 1
    assert effective_kernel_size(kernel, energy=0.9) == 7
    narrow, wide = gaussian_envelope(torch.tensor([0.05, 2.0]), 9)
    assert effective_kernel_size(narrow) < effective_kernel_size(wide) == 9
    with pytest.raises(ValueError, match='energy must be in'):
        effective_kernel_size(kernel, energy=1.5)


@pytest.mark.parametrize('n', [3, 5, 7, 9])
def test_the_layers_envelope_and_its_derivative_equal_the_formula(n):
    """The layer's envelope (a softmax over the grid) and dU/dsigma (forward mode) against eq. 11/21 and autograd."""
    sigma = _sigmas(n)
    coordinates = grid_coordinates((n, n), dtype=torch.float64)
    expected = gaussian_envelope(sigma, n)
    torch.testing.assert_close(normalized_envelope(sigma, None, coordinates), expected, rtol=1e-12, atol=1e-14)
    envelope, derivatives = envelope_derivatives(sigma, None, coordinates)
    torch.testing.assert_close(envelope, expected, rtol=1e-12, atol=1e-14)
    # dU_q/dsigma_q: the diagonal of the Jacobian of the formula
    jacobian = torch.func.jacrev(lambda s: gaussian_envelope(s, n))(sigma)  # (filters, n, n, filters)
    derivative = torch.stack([jacobian[q, :, :, q] for q in range(len(sigma))])
    torch.testing.assert_close(derivatives[0], derivative, rtol=1e-9, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda s: normalized_envelope(s, None, coordinates), (sigma[::6].clone().requires_grad_(),), fast_mode=True
    )


@pytest.mark.parametrize('sigma', [1e-3, 1e-2, 0.05])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_underflowed_weights_keep_the_derivative_finite(sigma, dtype):
    """At small apertures the far weights underflow; the floor under the square root keeps dU/dsigma finite (and 0
    there), in every dtype (float16 and bfloat16 computed in float32), for every covariance."""
    coordinates = grid_coordinates((7, 7), dtype=dtype)
    for apertures, theta in (
        (torch.full((3,), sigma), None),
        (torch.full((3, 2), sigma), None),
        (torch.full((3, 2), sigma), torch.tensor([0.0, 0.5, 2.0])),
    ):
        apertures = apertures.to(dtype).requires_grad_()
        angles = None if theta is None else theta.to(dtype).requires_grad_()
        envelope = normalized_envelope(apertures, angles, coordinates)
        assert envelope.dtype == dtype and torch.isfinite(envelope).all()
        envelope.float().square().mul(torch.arange(49.0).view(7, 7)).sum().backward()
        assert torch.isfinite(apertures.grad).all()
        assert angles is None or torch.isfinite(angles.grad).all()


@pytest.mark.parametrize(
    'sides,covariance_type',
    [((7, 7), 'spherical'), ((9,), 'spherical'), ((7, 3), 'diag'), ((5, 5, 3), 'diag'), ((7, 7), 'full')],
)
def test_closed_form_derivatives_of_every_kind_equal_forward_mode_autograd(sides, covariance_type):
    """The derivatives the training window reads (envelope_derivatives, closed form) against forward-mode
    autograd through normalized_envelope, in each aperture component and the angle."""
    generator = torch.Generator().manual_seed(0)
    ndim = len(sides)
    shape = (5,) if covariance_type == 'spherical' else (5, ndim)
    sigma = torch.rand(shape, generator=generator, dtype=torch.float64) * 0.5 + 0.02
    theta = torch.rand(5, generator=generator, dtype=torch.float64) * 6 - 3 if covariance_type == 'full' else None
    coordinates = grid_coordinates(sides, dtype=torch.float64)
    envelope, derivatives = envelope_derivatives(sigma, theta, coordinates)
    params = (sigma,) if theta is None else (sigma, theta)

    def envelope_of(*values):
        return normalized_envelope(values[0], values[1] if len(values) > 1 else None, coordinates)

    expected = []
    for index, param in enumerate(params):
        for component in range(1 if param.dim() == 1 else param.shape[1]):
            tangents = [torch.zeros_like(value) for value in params]
            tangents[index][(slice(None), component) if param.dim() == 2 else slice(None)] = 1
            expected.append(torch.func.jvp(envelope_of, params, tuple(tangents))[1])
    torch.testing.assert_close(envelope, envelope_of(*params), rtol=0, atol=0)
    torch.testing.assert_close(derivatives, torch.stack(expected), rtol=1e-9, atol=1e-12)
