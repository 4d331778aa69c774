"""Normalized Gaussian envelope of adaptive convolution kernels, for every layer kind

Paper: `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.),
section 3.2 (the Gaussian envelope, eq. 11) and section 3.3 (its normalization, eq. 21 and
Theorem 3.1).

For every output filter q the envelope on an odd grid of sides ``n_0 × n_1 × ...`` is

    U_q(g) = s_q * exp(-sum_a d_a² / (2 sigma_qa² + 1e-8)),     d = g - mu (rotated by theta_q for 'full')

with grid coordinates normalized per axis to ``k / (n_a - 1)`` (both edges included), the fixed
centre ``mu = 0.5`` on every axis and ``s_q`` chosen so that ``sum_g U_q(g)² =`` the number of grid
points: the mean squared coefficient is one, which keeps the mean variance of ``W ∘ U`` equal to that
of ``W`` whatever the apertures are (Theorem 3.1). The covariance (:mod:`timm_aconv.layers.covariance`)
is a circle or sphere (``sigma`` of shape (filters,), the paper's), axis-aligned (``sigma`` (filters,
ndim)) or, in 2-D, rotated by ``theta`` (filters,). On a square 2-D grid with one sigma per filter:

    U_q[k, l] = s_q * exp(-||g_kl - mu||² / (2 sigma_q² + 1e-8))

:func:`normalized_envelope` computes every kind as ``U = sqrt(cells * softmax(z))`` over the grid, with
``z = -d² / (sigma² + eps / 2)`` summed over the axes, and the numerical care every kind shares: weights
that underflow are floored at float32's smallest normal number, so that the square root's derivative,
and with it dU/dsigma, stays finite for any aperture; float16 and bfloat16 apertures are computed in
float32 and the envelope cast back. :func:`gaussian_envelope` is the paper's formula written out (the
reference of the tests); :func:`envelope_derivatives` adds U's derivative in each aperture (what the
training window's energy bound reads, :mod:`timm_aconv.layers.window`).
"""

import math
from typing import List, Optional, Tuple

import torch

__all__ = [
    'SIGMA_EPS',
    'centre_energy_fraction',
    'effective_kernel_size',
    'envelope_derivatives',
    'gaussian_envelope',
    'grid_coordinates',
    'normalized_envelope',
]

# the authors' guard against a division by zero for sigma -> 0
SIGMA_EPS = 1e-8


def grid_coordinates(
    sides: Tuple[int, ...], device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Per axis, the signed offset of each grid point from the centre, shape ``(ndim, *sides)``.

    Axis a has coordinates ``k / (n_a - 1)`` (both edges included, centre 0.5; a 1-point axis is its
    centre), so sigma is in units of each axis's extent: entry a holds ``k_a / (n_a - 1) - 0.5``.
    """
    offsets = []
    for axis, size in enumerate(sides):
        coords = (
            torch.linspace(-0.5, 0.5, size, device=device, dtype=dtype)
            if size > 1
            else torch.zeros(1, device=device, dtype=dtype)
        )
        shape = [1] * len(sides)
        shape[axis] = size
        offsets.append(coords.view(shape).expand(*sides))
    return torch.stack(offsets)


def normalized_envelope(
    sigma: torch.Tensor, theta: Optional[torch.Tensor], coordinates: torch.Tensor, eps: float = SIGMA_EPS
) -> torch.Tensor:
    """The normalized envelopes U of every layer kind, differentiable in sigma and theta.

    Args:
        sigma: apertures: (filters,) for one per filter ('spherical'), (filters, ndim) for one per filter
            and axis ('diag'), or (filters, 2) along the principal axes of a rotated ellipse ('full').
        theta: the principal axes' angles in radians (filters,) for 'full', else None. The rotated offsets
            are ``d'_1 = cos θ d_0 + sin θ d_1``, ``d'_2 = cos θ d_1 - sin θ d_0`` (d in the kernel's axis
            order: rows, columns).
        coordinates: the grid's ``(ndim, *sides)`` offsets (:func:`grid_coordinates`).
        eps: added to 2 sigma² against a division by zero (the authors' 1e-8).

    Returns:
        Envelopes of shape (filters, *sides) in sigma's dtype, with ``U[q].square().sum()`` the number of grid
        points.
    """
    dtype = sigma.dtype
    if dtype == torch.float16 or dtype == torch.bfloat16:  # 6e-8 underflows in float16: computed in float32
        sigma, coordinates = sigma.float(), coordinates.float()
        if theta is not None:
            theta = theta.float()
    neg_half_var = torch.rsub(sigma.square(), -eps / 2)  # -(2 sigma² + eps) / 2
    ndim = coordinates.shape[0]
    if sigma.dim() == 1:  # one aperture: the squared distance to the centre, summed over the axes first
        exponent = torch.div(coordinates.square().sum(0).reshape(1, -1), neg_half_var.view(-1, 1))
    else:
        offsets = coordinates.reshape(1, ndim, -1)  # (1, ndim, cells)
        if theta is not None:  # the offsets along the ellipse's axes: R(theta)ᵀ d, (filters, 2, cells)
            cos, sin = theta.cos(), theta.sin()
            rotation = torch.stack([cos, sin, -sin, cos], -1).view(-1, 2, 2, 1)
            offsets = (rotation * offsets.unsqueeze(1)).sum(2)
        exponent = (offsets.square() / neg_half_var.unsqueeze(-1)).sum(1)
    cells = exponent.shape[1]
    # weights that underflow take float32's smallest normal number, 1.2e-38 (a literal: TorchScript reads no
    # globals): the square root's derivative stays finite there, so that dU/dsigma is 0 there, not 0 * inf = nan
    envelope = torch.softmax(exponent, dim=1).clamp_min(1.2e-38).sqrt().mul(math.sqrt(cells))
    shape = list(coordinates.shape[1:])  # (filters, *sides), written so that TorchScript compiles it
    shape.insert(0, exponent.shape[0])
    return envelope.view(shape).to(dtype)


def envelope_derivatives(
    sigma: torch.Tensor, theta: Optional[torch.Tensor], coordinates: torch.Tensor, eps: float = SIGMA_EPS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The envelopes U of :func:`normalized_envelope` and their derivatives in each aperture, without autograd.

    With the exponent ``z = -sum_a d'_a² / t_a`` (``t_a = sigma_a² + eps / 2``, d' the offsets along the envelope's
    axes) and the softmax weights ``w = U² / cells``, ``d log U / dp = (dz/dp - sum_g w dz/dp) / 2`` for each
    aperture p (eq. 12 through the normalization of eq. 21): ``dz/dsigma_a = 2 sigma_a d'_a² / t_a²`` and, for a
    rotated envelope, ``dz/dtheta = 2 d'_1 d'_2 (1 / t_2 - 1 / t_1)``.

    Returns:
        ``(envelope, derivatives)``: (filters, *sides) and (components, filters, *sides), in float32 for float16
        and bfloat16 apertures, else in sigma's dtype; components: 1 ('spherical'), ndim ('diag') or 3 ('full':
        sigma's two axes, then theta).
    """
    sigma = sigma.detach()
    if sigma.dtype == torch.float16 or sigma.dtype == torch.bfloat16:
        sigma = sigma.float()
    coordinates = coordinates.to(sigma.dtype)
    theta = None if theta is None else theta.detach().to(sigma.dtype)
    envelope = normalized_envelope(sigma, theta, coordinates, eps)
    ndim = coordinates.shape[0]
    offsets = coordinates.reshape(1, ndim, -1)  # (1, ndim, cells)
    if theta is not None:
        cos, sin = theta.cos().view(-1, 1), theta.sin().view(-1, 1)
        offsets = torch.stack([cos * offsets[:, 0] + sin * offsets[:, 1], cos * offsets[:, 1] - sin * offsets[:, 0]], 1)
    half_var = sigma.square() + eps / 2
    half_var = half_var.view(-1, 1, 1) if sigma.dim() == 1 else half_var.unsqueeze(-1)  # (filters, 1 or ndim, 1)
    per_axis = 2 * sigma.view(half_var.shape[0], -1, 1) * offsets.square() / half_var.square()  # dz / dsigma_a
    exponent_grads = [per_axis.sum(1)] if sigma.dim() == 1 else list(per_axis.unbind(1))
    if theta is not None:
        exponent_grads.append(2 * offsets[:, 0] * offsets[:, 1] * (1 / half_var[:, 1] - 1 / half_var[:, 0]))
    weights = envelope.reshape(envelope.shape[0], -1).square() / offsets.shape[-1]  # the softmax of the exponent
    flat = envelope.reshape(envelope.shape[0], -1)
    derivatives = [flat * (grad - (weights * grad).sum(-1, keepdim=True)) / 2 for grad in exponent_grads]
    return envelope, torch.stack(derivatives).view(len(derivatives), *envelope.shape)


def gaussian_envelope(sigma: torch.Tensor, kernel_size: int, eps: float = SIGMA_EPS) -> torch.Tensor:
    """Normalized circular Gaussian envelopes on a square grid, one per aperture: the paper's formula as written.

    Args:
        sigma: apertures in normalized grid units, shape (filters,).
        kernel_size: odd base-grid size n.
        eps: added to 2 sigma² against a division by zero (the authors' 1e-8).

    Returns:
        Envelopes of shape (filters, n, n) with ``envelope[q].square().sum() == n * n``.
    """
    sq_distance = grid_coordinates((kernel_size, kernel_size), sigma.device, sigma.dtype).square().sum(0)
    two_var = 2 * sigma.square() + eps
    raw = torch.exp(-sq_distance / two_var[:, None, None])
    # s_q of eq. 21: scale each envelope so that its squared coefficients sum to n²
    scale = kernel_size / raw.square().sum(dim=(1, 2), keepdim=True).sqrt()
    return raw * scale


def centre_energy_fraction(kernel: torch.Tensor) -> List[float]:
    """Fraction of a kernel's energy (sum of squares) inside each odd centred window.

    Args:
        kernel: (..., n, n) tensor with odd n; energy is summed over every leading dim.

    Returns:
        ``fractions[i]`` is the energy share of the centred (2i+1)×(2i+1) window.
    """
    energy = kernel.detach().float().square().reshape(-1, *kernel.shape[-2:]).sum(0)
    total = float(energy.sum())
    n = energy.shape[-1]
    centre = n // 2
    fractions = []
    for radius in range(centre + 1):
        window = energy[centre - radius : centre + radius + 1, centre - radius : centre + radius + 1]
        fractions.append(float(window.sum()) / total if total > 0 else 1.0)
    return fractions


def effective_kernel_size(kernel: torch.Tensor, energy: float = 0.95) -> int:
    """Smallest odd centred window of ``kernel`` (..., n, n) that holds ``energy`` of its energy."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f'energy must be in (0, 1], got {energy}')
    for radius, fraction in enumerate(centre_energy_fraction(kernel)):
        # a tiny tolerance so that energy=1.0 does not demand more than float rounding allows
        if fraction >= energy - 1e-6:
            return 2 * radius + 1
    return kernel.shape[-1]
