"""The C++ family experiment (benchmarks/family_extension.py): the C++ node's kernels and gradients are the
native formulation's bits, the fused loops' equal them to rounding, both backwards are the derivative
(float64 gradcheck), and the script times the pairs it names."""

import copy
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import family_extension
import timing

import timm_aconv
from timm_aconv.layers import kernel_group

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _ninja_available() -> bool:
    try:
        import ninja  # noqa: F401 (the pip package: build() puts its binary on PATH)

        return True
    except ImportError:
        return shutil.which('ninja') is not None


@pytest.fixture(scope='module')
def extension():
    """The compiled extension (about 40 s the first time on 2 cores; torch caches the build)."""
    compiler = os.environ.get('CXX', 'c++')
    if shutil.which(compiler) is None or not _ninja_available():
        pytest.skip(f'building the C++ family needs a C++ compiler ({compiler}) and ninja')
    return family_extension.build()


@pytest.fixture
def extension_family(extension):
    return family_extension.ExtensionFamilyKernels(extension)


def _tiny_model(depth: int = 8):
    adaptive, _ = family_extension.tiny_resnet_pair(depth)
    with torch.no_grad():  # a spread of apertures; the smallest underflows the softmax on the grid's corners
        for index, layer in enumerate(timm_aconv.adaptive_layers(adaptive)):
            layer.sigma.copy_(torch.linspace(0.01, 0.4 + 0.05 * index, layer.out_channels))
    return adaptive


def test_extension_family_has_the_native_bits(extension_family):
    adaptive = _tiny_model()
    family, weights, sigmas = family_extension.family_tensors(adaptive)[0]
    assert len(family.stacks) > 1  # stacks of several layers and of one
    native, _ = kernel_group.family_kernels(family, weights, sigmas)
    kernels, node_output = extension_family(family, weights, sigmas)
    assert all(torch.equal(kernel, reference) for kernel, reference in zip(kernels, native))
    assert 'FamilyKernels' in node_output.grad_fn.name()  # one C++ node for the family
    assert {kernel.grad_fn for kernel in kernels} == {node_output.grad_fn}
    assert family_extension.gradient_differences(adaptive, extension_family) == dict(differing=0, largest_relative=0)


def test_fused_family_equals_the_native_one_to_rounding(extension):
    adaptive = _tiny_model()
    fused = family_extension.ExtensionFamilyKernels(extension, 'fused')
    family, weights, sigmas = family_extension.family_tensors(adaptive)[0]
    native, _ = kernel_group.family_kernels(family, weights, sigmas)
    kernels, node_output = fused(family, weights, sigmas)
    assert 'FusedFamilyKernels' in node_output.grad_fn.name()
    for kernel, reference in zip(kernels, native):
        torch.testing.assert_close(kernel, reference, rtol=1e-6, atol=1e-6)
    differences = family_extension.gradient_differences(adaptive, fused)
    assert differences['differing'] > 0 and differences['largest_relative'] < 1e-5


@pytest.mark.parametrize('variant', ['node', 'fused'])
def test_extension_family_backward_is_the_derivative(extension, variant):
    extension_family = family_extension.ExtensionFamilyKernels(extension, variant)
    family, weights, sigmas = family_extension.family_tensors(_tiny_model().double())[0]
    count = len(weights)

    def kernels(*tensors):
        return tuple(extension_family(family, tensors[:count], tensors[count:])[0])

    inputs = [tensor.detach().clone().requires_grad_() for tensor in [*weights, *sigmas]]
    assert torch.autograd.gradcheck(kernels, inputs, eps=1e-6, atol=1e-5)


def test_plumbing_only_node_has_the_family_shapes_and_computes_nothing(extension):
    family, weights, sigmas = family_extension.family_tensors(_tiny_model())[0]
    kernels, node_output = family_extension.ExtensionFamilyKernels(extension, 'plumbing')(family, weights, sigmas)
    assert 'PlumbingOnly' in node_output.grad_fn.name()
    assert [kernel.shape for kernel in kernels] == [weight.shape for weight in weights]
    grads = torch.autograd.grad(kernels, [*weights, *sigmas], [torch.ones_like(kernel) for kernel in kernels])
    assert all(not tensor.any() for tensor in [*kernels, *grads])
    assert [grad.shape for grad in grads] == [tensor.shape for tensor in [*weights, *sigmas]]


def test_extension_family_refuses_a_training_window_and_unknown_variants(extension_family):
    with pytest.raises(ValueError, match="variant must be one of \\('node', 'fused', 'plumbing'\\), got 'loops'"):
        family_extension.ExtensionFamilyKernels(extension_family.extension, 'loops')
    cropped = copy.copy(family_extension.family_tensors(_tiny_model())[0][0])
    cropped.crop, cropped.window = slice(0, 1), 1
    with pytest.raises(ValueError, match='whole grids in float32 or float64, got a training window 1 of 3'):
        extension_family(cropped, [], [])


def test_family_function_is_restored_after_an_error():
    def failing(family, weights, sigmas):
        raise RuntimeError('family failed')

    with pytest.raises(RuntimeError, match='family failed'):
        family_extension.step_gradients(_tiny_model(), failing)
    assert kernel_group.family_kernels is family_extension.NATIVE_FAMILY_KERNELS


def test_extension_cases_time_the_pairs_they_name():
    """The script's wiring, without the compiler: with a counting stand-in for a C++ family, each row's
    first and second step compute their families as its label says."""
    calls = []

    def counting_family(family, weights, sigmas):
        calls.append(family)
        return family_extension.NATIVE_FAMILY_KERNELS(family, weights, sigmas)

    uses = []

    def measure(first, second, **kwargs):
        used = []
        for step in (first, second):
            before = len(calls)
            step()
            used.append(len(calls) > before)
        uses.append(tuple(used))
        return timing.Comparison(3.0, 2.0, 1.5, 1.4, 1.6, 1, 1, float('nan'), float('nan'))

    rows = family_extension.extension_cases(measure, {'counted': counting_family}, depths=(8,))
    assert [row['case'] for row in rows] == [
        'family work alone (kernels and their backward): counted vs native',
        'train step: counted vs native',
        'train step: counted vs ordinary',
        'train step: native vs ordinary',
        'train step: floor (sigma parameters only) vs ordinary',
    ]
    assert uses == [(True, False), (True, False), (True, False), (False, False), (False, False)]
    assert all(row['depth'] == 8 and row['ratio'] == 1.5 and row['differing_gradients'] == 0 for row in rows)
    assert kernel_group.family_kernels is family_extension.NATIVE_FAMILY_KERNELS
