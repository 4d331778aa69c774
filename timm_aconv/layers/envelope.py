"""Normalized Gaussian envelope of adaptive convolution kernels

Paper: `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.),
section 3.2 (the circular Gaussian envelope, eq. 11) and section 3.3 (its normalization,
eq. 21 and Theorem 3.1).

For every output filter q with aperture ``sigma_q`` the envelope on an n×n grid is

    U_q[k, l] = s_q * exp(-||g_kl - mu||² / (2 sigma_q² + 1e-8))

with grid coordinates ``g_kl = (k / (n - 1), l / (n - 1))`` normalized to the unit square
(both edges included), the fixed centre ``mu = (0.5, 0.5)`` and ``s_q`` chosen so that
``sum_kl U_q[k, l]² == n²``: the mean squared coefficient is one, which keeps the mean
variance of ``W ∘ U`` equal to that of ``W`` whatever sigma is (Theorem 3.1).

:func:`gaussian_envelope` is that formula; :func:`softmax_envelope` is the same envelope in
fewer operations (``U² / n²`` is a softmax over the grid of ``-d² / (sigma² + eps / 2)``), which
the layer uses (its training path differentiates it with autograd), and
:func:`envelope_and_log_derivative` computes it without autograd together with its closed-form derivative
in sigma (what the training window's energy bound reads, :mod:`timm_aconv.layers.window`).
"""

from typing import List, Optional, Tuple

import torch

__all__ = [
    'centre_energy_fraction',
    'covariance_envelope',
    'effective_kernel_size',
    'envelope_and_log_derivative',
    'gaussian_envelope',
    'grid_axis_coordinates',
    'grid_axis_sq_distances',
    'grid_sq_distance',
    'nd_envelope',
    'rotated_envelope',
    'softmax_envelope',
    'softmax_weights',
]

# the authors' guard against a division by zero for sigma -> 0
SIGMA_EPS = 1e-8


def grid_sq_distance(kernel_size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Squared distance of each point of the normalized n×n grid to its centre, shape (n, n)."""
    coords = torch.linspace(-0.5, 0.5, kernel_size, device=device, dtype=dtype)
    return coords.unsqueeze(1).square() + coords.unsqueeze(0).square()


def grid_axis_coordinates(
    kernel_size: Tuple[int, ...], device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Per axis, the signed offset of each point of a normalized grid from its centre.

    Every axis of an ``n_0 × n_1 × ...`` grid has coordinates ``k / (n_a - 1)`` (both edges included,
    centre 0.5; a 1-point axis is its centre), so sigma is in units of each axis's extent.

    Returns:
        Shape ``(ndim, *kernel_size)``: entry ``a`` holds ``d_a = k_a / (n_a - 1) - 0.5`` at every grid point.
    """
    offsets = []
    for axis, size in enumerate(kernel_size):
        coords = (
            torch.linspace(-0.5, 0.5, size, device=device, dtype=dtype)
            if size > 1
            else torch.zeros(1, device=device, dtype=dtype)
        )
        shape = [1] * len(kernel_size)
        shape[axis] = size
        offsets.append(coords.view(shape).expand(*kernel_size))
    return torch.stack(offsets)


def grid_axis_sq_distances(
    kernel_size: Tuple[int, ...], device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None
) -> torch.Tensor:
    """Per axis, the squared distance ``d_a²`` of each point of a normalized grid to its centre, shape
    ``(ndim, *kernel_size)`` (the square of :func:`grid_axis_coordinates`)."""
    return grid_axis_coordinates(kernel_size, device, dtype).square()


def nd_envelope(sigma: torch.Tensor, axis_sq_distances: torch.Tensor, eps: float = SIGMA_EPS) -> torch.Tensor:
    """Normalized Gaussian envelopes on a grid of any dimension, differentiable in sigma.

    ``U ∝ exp(-sum_a d_a² / (2 sigma_a² + eps))``, scaled so that ``sum U² =`` the number of grid
    points (Theorem 3.1 for any envelope), computed as ``U = sqrt(cells * softmax(-sum_a d_a² / t_a))``
    with ``t_a = sigma_a² + eps / 2``.

    Args:
        sigma: apertures: shape (filters,) for one aperture per filter (spherical), or
            (filters, ndim) for one per filter and axis (diag).
        axis_sq_distances: (ndim, *grid) from :func:`grid_axis_sq_distances`.
        eps: added to 2 sigma² against a division by zero (the authors' 1e-8).

    Returns:
        Envelopes of shape (filters, *grid).
    """
    ndim = axis_sq_distances.shape[0]
    half_var = sigma.square() + eps / 2
    half_var = half_var.unsqueeze(-1).expand(-1, ndim) if sigma.ndim == 1 else half_var  # (filters, ndim)
    exponent = -(axis_sq_distances.reshape(1, ndim, -1) / half_var.unsqueeze(-1)).sum(1)  # (filters, cells)
    cells = exponent.shape[-1]
    shape = list(axis_sq_distances.shape[1:])  # (filters, *grid), written so that TorchScript compiles it
    shape.insert(0, exponent.shape[0])
    return torch.softmax(exponent, dim=1).mul(cells).sqrt().reshape(shape)


def rotated_envelope(
    sigma: torch.Tensor, theta: torch.Tensor, axis_coordinates: torch.Tensor, eps: float = SIGMA_EPS
) -> torch.Tensor:
    """Normalized elliptic envelopes on a 2-D grid, rotated by ``theta``, differentiable in sigma and theta.

    With ``d' = R(theta)ᵀ d`` (``d'_1 = cos θ d_1 + sin θ d_2``, ``d'_2 = -sin θ d_1 + cos θ d_2``, d in
    the kernel's axis order (rows, columns)), ``U ∝ exp(-(d'_1² / (2 sigma_1² + eps) + d'_2² / (2 sigma_2² +
    eps)))``, scaled so that ``sum U² =`` the number of grid points, as :func:`nd_envelope`.

    Args:
        sigma: apertures along the two principal axes, shape (filters, 2).
        theta: the principal axes' angle in radians, shape (filters,).
        axis_coordinates: (2, rows, columns) from :func:`grid_axis_coordinates`.
        eps: added to 2 sigma² against a division by zero (the authors' 1e-8).

    Returns:
        Envelopes of shape (filters, rows, columns).
    """
    rows = axis_coordinates[0].reshape(1, -1)
    columns = axis_coordinates[1].reshape(1, -1)
    cos, sin = theta.cos().unsqueeze(-1), theta.sin().unsqueeze(-1)
    along = cos * rows + sin * columns  # (filters, cells)
    across = cos * columns - sin * rows
    half_var = sigma.square() + eps / 2  # (filters, 2)
    exponent = -(along.square() / half_var[:, 0:1] + across.square() / half_var[:, 1:2])
    cells = exponent.shape[-1]
    shape = list(axis_coordinates.shape[1:])
    shape.insert(0, exponent.shape[0])
    return torch.softmax(exponent, dim=1).mul(cells).sqrt().reshape(shape)


def covariance_envelope(
    sigma: torch.Tensor, theta: Optional[torch.Tensor], axis_coordinates: torch.Tensor, eps: float = SIGMA_EPS
) -> torch.Tensor:
    """The envelope of a layer's ``covariance_type``: :func:`rotated_envelope` ('full', ``theta`` given),
    else :func:`nd_envelope` ('spherical': sigma (filters,); 'diag': sigma (filters, ndim))."""
    if theta is not None:
        return rotated_envelope(sigma, theta, axis_coordinates, eps)
    return nd_envelope(sigma, axis_coordinates.square(), eps)


def gaussian_envelope(sigma: torch.Tensor, kernel_size: int, eps: float = SIGMA_EPS) -> torch.Tensor:
    """Normalized circular Gaussian envelopes, one per aperture.

    Args:
        sigma: apertures in normalized grid units, shape (filters,).
        kernel_size: odd base-grid size n.
        eps: added to 2 sigma² against a division by zero (the authors' 1e-8).

    Returns:
        Envelopes of shape (filters, n, n) with ``envelope[q].square().sum() == n * n``.
    """
    sq_distance = grid_sq_distance(kernel_size, sigma.device, sigma.dtype)
    two_var = 2 * sigma.square() + eps
    raw = torch.exp(-sq_distance / two_var[:, None, None])
    # s_q of eq. 21: scale each envelope so that its squared coefficients sum to n²
    scale = kernel_size / raw.square().sum(dim=(1, 2), keepdim=True).sqrt()
    return raw * scale


def softmax_weights(
    sigma: torch.Tensor, sq_distance: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(U² / n², z, -t)`` flattened over the grid: the softmax of ``z = -d² / t``, ``t = sigma² + eps / 2``.

    ``sq_distance`` is the grid's (n, n) squared distances, or the same flattened to (1, n²).
    """
    neg_half_two_var = torch.rsub(sigma.square(), -eps / 2)  # -t = -(2 sigma² + eps) / 2
    exponent = torch.div(sq_distance.reshape(1, -1), neg_half_two_var.view(-1, 1))  # z, (filters, n²)
    return torch.softmax(exponent, dim=1), exponent, neg_half_two_var


def softmax_envelope(sigma: torch.Tensor, sq_distance: torch.Tensor, eps: float = SIGMA_EPS) -> torch.Tensor:
    """:func:`gaussian_envelope` as ``U = n * sqrt(softmax(z))`` over the grid, differentiable in sigma.

    Args:
        sigma: apertures, shape (filters,).
        sq_distance: the grid's squared distances, shape (n, n) (:func:`grid_sq_distance`).
        eps: added to 2 sigma² against a division by zero (the authors' 1e-8).

    Returns:
        Envelopes of shape (filters, n, n), equal to :func:`gaussian_envelope` to float rounding.
    """
    size = sq_distance.shape[-1]
    half = sigma.dtype == torch.float16  # float16 underflows at 6e-8: its envelopes are computed in float32
    if half:
        sigma, sq_distance = sigma.float(), sq_distance.float()
    weights, _, _ = softmax_weights(sigma, sq_distance, eps)
    # weights that underflow to 0 (a small sigma's far cells) take float32's smallest normal number, 1.2e-38:
    # the square root's derivative stays finite there, so that autograd's dU/dsigma is 0 there, not 0 * inf = nan
    envelope = weights.clamp_min(1.2e-38).sqrt().mul(size).view(-1, size, size)
    return envelope.half() if half else envelope


def envelope_and_log_derivative(
    sigma: torch.Tensor,
    sq_distance: torch.Tensor,
    with_log_derivative: bool = True,
    eps: float = SIGMA_EPS,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The envelopes U of :func:`softmax_envelope` and ``d log U / d sigma``, without autograd.

    With ``t = sigma² + eps / 2`` and ``z = -d² / t`` the normalized envelope is
    ``U = n * sqrt(softmax(z))`` (``U² / n²`` are the softmax weights). Its logarithmic derivative
    (eq. 12 through the normalization of eq. 21) is ``d log U / d sigma = (sigma / t) * (mean_U(z) - z)``
    with ``mean_U(z) = sum_kl softmax(z) * z``, so that ``dU / dsigma = U * log_derivative``.

    Args:
        sigma: apertures, shape (filters,); read without autograd.
        sq_distance: the grid's squared distances, shape (n, n) (:func:`grid_sq_distance`).
        with_log_derivative: also compute the derivative (else None is returned for it).
        eps: added to 2 sigma² against a division by zero (the authors' 1e-8).

    Returns:
        ``(envelope, log_derivative)``, each of shape (filters, n, n).
    """
    sigma = sigma.detach()
    size = sq_distance.shape[-1]
    weights, exponent, neg_half_two_var = softmax_weights(sigma, sq_distance, eps)
    envelope = weights.sqrt().mul_(size).view(-1, size, size)  # in place: no autograd here
    if not with_log_derivative:
        return envelope, None
    mean_exponent = (weights * exponent).sum(dim=1, keepdim=True)
    # (sigma / t) * (mean - z) == (sigma / -t) * (z - mean)
    log_derivative = (exponent - mean_exponent).mul_((sigma / neg_half_two_var)[:, None])
    return envelope, log_derivative.view(-1, size, size)


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
