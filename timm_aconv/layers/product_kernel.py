""" The product kernel ``W ∘ U(sigma)`` of adaptive layers, with its gradients in closed form

Paper: `Adaptive Convolution Kernel for Artificial Neural Networks` (F. Boray Tek et al.),
eq. 12 (the envelope's derivative in sigma) through the normalization of eq. 21.

Autograd through the envelope's formula records a dozen small operations per layer and as many
again for their backward; on a GPU each one is a kernel launch. :func:`adaptive_product_kernel`
takes the envelope U and its logarithmic derivative ``V = d log U / d sigma`` (computed once,
without autograd, by :func:`~timm_aconv.layers.envelope.envelope_and_log_derivative`) and is one
autograd node: forward ``K = W ∘ U``; backward ``dL/dW = G ∘ U`` and
``dL/dsigma_q = sum_{c,k,l} G ∘ K ∘ V`` for the kernel's gradient G.
"""
import torch
from torch.autograd.function import once_differentiable

__all__ = ['adaptive_product_kernel']


class _ProductKernel(torch.autograd.Function):
    generate_vmap_rule = True  # torch.func.vmap over the forward and the backward below

    @staticmethod
    def forward(weight, sigma, envelope, log_derivative):
        kernel = weight * envelope.unsqueeze(1)
        # dK/dsigma_q: the backward's contraction with G is then one batched dot product
        return kernel, kernel * log_derivative.unsqueeze(1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _weight, _sigma, envelope, _log_derivative = inputs
        _kernel, sigma_derivative = output
        ctx.mark_non_differentiable(sigma_derivative)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(envelope, sigma_derivative)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kernel, _grad_sigma_derivative):
        if grad_kernel is None:
            return None, None, None, None
        envelope, sigma_derivative = ctx.saved_tensors
        grad_weight = grad_sigma = None
        if ctx.needs_input_grad[0]:
            grad_weight = grad_kernel * envelope.unsqueeze(1)
        if ctx.needs_input_grad[1]:
            grad_sigma = _batched_dot(grad_kernel, sigma_derivative)
        return grad_weight, grad_sigma, None, None


def _batched_dot(grad_kernel: torch.Tensor, sigma_derivative: torch.Tensor) -> torch.Tensor:
    """ ``(grad_kernel * sigma_derivative).sum(dim=(1, 2, 3))`` in one operation where it can. """
    device_type = grad_kernel.device.type
    # bmm would run in low precision inside an autocast region (a backward called under autocast)
    autocast = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)
    if autocast or not (grad_kernel.is_contiguous() and sigma_derivative.is_contiguous()):
        return (grad_kernel * sigma_derivative).sum(dim=(1, 2, 3))
    filters = grad_kernel.shape[0]
    return torch.bmm(grad_kernel.view(filters, 1, -1), sigma_derivative.view(filters, -1, 1)).view(filters)


def adaptive_product_kernel(
        weight: torch.Tensor,
        sigma: torch.Tensor,
        envelope: torch.Tensor,
        log_derivative: torch.Tensor,
) -> torch.Tensor:
    """ ``weight * envelope[:, None]``, differentiable in ``weight`` and ``sigma``.

    Args:
        weight: W, shape (out_channels, in_channels / groups, n, n).
        sigma: the apertures the envelope was computed from, shape (out_channels,); only its
            gradient flows through here.
        envelope: U(sigma), shape (out_channels, n, n), no autograd history needed.
        log_derivative: ``d log U / d sigma``, shape (out_channels, n, n).

    Returns:
        The product kernel, shape of ``weight``. Its gradients are first order only (a second
        backward through it raises).
    """
    return _ProductKernel.apply(weight, sigma, envelope, log_derivative)[0]
