"""2-D envelopes beyond the circle: 'diag' and 'full' (rotated) covariance, rectangular grids

The rotated envelope against ``U ∝ exp(-(d'_1² / (2 σ_1² + 1e-8) + d'_2² / (2 σ_2² + 1e-8)))`` with
``d' = R(θ)ᵀ d`` and ``sum U² =`` the number of grid points (Theorem 3.1), gradcheck in sigma and theta;
the layer against the torch convolution of its product kernel for every option, gradcheck in input, W,
bias, sigma and theta; spherical layers untouched; clamp and parameter groups; surgery (convert → fuse
exact on timm's resnet18 with 'full', per-axis crops within their tolerance).
"""

import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_aconv
from timm_aconv import AdaptiveConv2d
from timm_aconv.layers.envelope import grid_coordinates, normalized_envelope

GRIDS = [(7, 7), (7, 3), (3, 5), (9, 1)]


def reference_normalized_envelope(sigma: torch.Tensor, theta: torch.Tensor, kernel_size) -> torch.Tensor:
    """The formula written out, one filter at a time."""
    axes = [torch.linspace(-0.5, 0.5, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
            for n in kernel_size]  # fmt: skip
    rows, columns = torch.meshgrid(*axes, indexing='ij')
    envelopes = []
    for (sigma_1, sigma_2), angle in zip(sigma.tolist(), theta.tolist()):
        rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                                dtype=torch.float64)  # fmt: skip
        offsets = torch.stack([rows.flatten(), columns.flatten()])  # (2, cells)
        rotated = rotation.T @ offsets  # d' = R(θ)ᵀ d
        raw = torch.exp(-(rotated[0] ** 2 / (2 * sigma_1**2 + 1e-8) + rotated[1] ** 2 / (2 * sigma_2**2 + 1e-8)))
        raw = raw * math.sqrt(raw.numel() / float(raw.square().sum()))
        envelopes.append(raw.view(kernel_size))
    return torch.stack(envelopes)


@pytest.mark.parametrize('kernel_size', GRIDS, ids=lambda size: 'x'.join(map(str, size)))
def test_rotated_envelope_matches_the_formula_keeps_theorem_3_1_and_its_derivatives(kernel_size):
    torch.manual_seed(0)
    sigma = torch.rand(5, 2, dtype=torch.float64) * 1.5 + 0.05
    theta = (torch.rand(5, dtype=torch.float64) - 0.5) * 4
    coordinates = grid_coordinates(kernel_size, dtype=torch.float64)
    envelope = normalized_envelope(sigma, theta, coordinates)
    assert envelope.shape == (5, *kernel_size)
    torch.testing.assert_close(
        envelope, reference_normalized_envelope(sigma, theta, kernel_size), rtol=1e-12, atol=1e-12
    )
    cells = math.prod(kernel_size)
    torch.testing.assert_close(envelope.square().flatten(1).sum(1), torch.full((5,), float(cells), dtype=torch.float64))
    inputs = (sigma.clone().requires_grad_(True), theta.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda s, t: normalized_envelope(s, t, coordinates), inputs)


def test_rotated_envelope_special_cases():
    coordinates = grid_coordinates((7, 7), dtype=torch.float64)
    sigma = torch.tensor([[0.05, 0.6], [0.3, 0.3]], dtype=torch.float64)
    diag = normalized_envelope(sigma, None, coordinates)
    # theta 0 is the 'diag' envelope; a half turn too; a quarter turn swaps the axes
    torch.testing.assert_close(normalized_envelope(sigma, torch.zeros(2, dtype=torch.float64), coordinates), diag)
    torch.testing.assert_close(
        normalized_envelope(sigma, torch.full((2,), math.pi, dtype=torch.float64), coordinates), diag
    )
    quarter = normalized_envelope(sigma, torch.full((2,), math.pi / 2, dtype=torch.float64), coordinates)
    torch.testing.assert_close(quarter, diag.transpose(1, 2))
    # equal apertures: a circle, whatever the angle
    torch.testing.assert_close(quarter[1], diag[1])
    # 45°: the narrow axis (sigma_1) points along the diagonal (rows and columns grow together), so the
    # ellipse stretches along the anti-diagonal
    diagonal = normalized_envelope(sigma[:1], torch.tensor([math.pi / 4], dtype=torch.float64), coordinates)[0]
    assert diagonal[0, 6] > 0.4 * diagonal[3, 3] and diagonal[6, 6] < 1e-6 * diagonal[3, 3]


CONV_OPTIONS = [
    dict(padding='same'),
    dict(padding=0),
    dict(stride=2, padding=(3, 1)),
    dict(dilation=2, padding=(6, 2)),
    dict(groups=4, padding=(3, 1)),
    dict(padding=(3, 1), padding_mode='reflect'),
    dict(padding=(3, 1), padding_mode='circular', bias=False),
]


@pytest.mark.parametrize('options', CONV_OPTIONS, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
@pytest.mark.parametrize('covariance_type', ['spherical', 'diag', 'full'])
def test_layer_is_the_torch_convolution_of_its_product_kernel(options, covariance_type, check_reference_convolution):
    torch.manual_seed(0)
    layer = AdaptiveConv2d(4, 4, (7, 3), covariance_type=covariance_type, dtype=torch.float64, **options)
    if layer.theta is not None:
        with torch.no_grad():
            layer.theta.uniform_(-1, 1)
            layer.sigma.uniform_(0.1, 0.6)
    x = torch.randn(2, 4, 13, 11, dtype=torch.float64)
    reference = nn.Conv2d(4, 4, (7, 3), dtype=torch.float64, **options)
    check_reference_convolution(layer, reference, x)


@pytest.mark.parametrize('covariance_type', ['diag', 'full'])
def test_gradcheck_in_input_weight_bias_sigma_and_theta(covariance_type):
    torch.manual_seed(0)
    layer = AdaptiveConv2d(2, 3, (5, 3), padding=(2, 1), covariance_type=covariance_type, dtype=torch.float64)
    with torch.no_grad():
        layer.sigma.uniform_(0.15, 0.6)
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    names = ['weight', 'bias', 'sigma'] + (['theta'] if covariance_type == 'full' else [])
    params = [getattr(layer, name).detach().clone().requires_grad_(True) for name in names]
    if covariance_type == 'full':
        params[-1] = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def run(x, *values):
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(run, (x, *params))
    # the training forward (autograd through the formula) against the same in float64, theta included
    output = run(x, *params)
    grads = torch.autograd.grad(output.square().sum(), params)
    assert all(float(grad.abs().max()) > 0 for grad in grads)


def test_spherical_square_layers_are_the_papers():
    """The paper's layer keeps its state dict and its values: 'spherical' on a square grid is isotropic."""
    torch.manual_seed(0)
    layer = AdaptiveConv2d(3, 8, 7, padding=3)
    assert layer.isotropic and layer.theta is None and layer.grid_coordinates.shape == (2, 7, 7)
    assert list(layer.state_dict()) == ['weight', 'bias', 'sigma']
    assert nn.Sequential(layer)[0]._kernel_group is not None  # grouped as its model is built
    assert 'covariance_type' not in repr(layer)
    x = torch.randn(2, 3, 9, 9)
    expected = F.conv2d(
        x, layer.weight * timm_aconv.gaussian_envelope(layer.sigma, 7).unsqueeze(1), layer.bias, padding=3
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_bounds_clamp_and_parameter_groups_take_every_axis_and_theta():
    model = nn.Sequential(
        AdaptiveConv2d(2, 4, (7, 3), padding=(3, 1), covariance_type='diag'),
        nn.ReLU(),
        AdaptiveConv2d(4, 4, 5, padding=2, covariance_type='full'),
        nn.ReLU(),
        AdaptiveConv2d(4, 4, 5, padding=2),
    )
    diag, full, circle = model[0], model[2], model[4]
    assert diag.sigma_bounds == ((1 / 7, 7.0), (1 / 3, 3.0))
    assert full.sigma_bounds == ((0.2, 5.0), (0.2, 5.0)) and full.theta.shape == (4,)
    # every kind joins the model's kernel group, in families of their own
    group = circle._kernel_group
    assert diag._kernel_group is group and full._kernel_group is group and len(group._families) == 3
    groups = {group['name']: group['params'] for group in timm_aconv.param_groups(model, weight_decay=1e-4)}
    assert {id(param) for param in groups['sigma']} == {
        id(diag.sigma),
        id(full.sigma),
        id(full.theta),
        id(circle.sigma),
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=1e4)
    model(torch.randn(2, 2, 12, 12)).square().mean().backward()
    theta_before = full.theta.detach().clone()
    with torch.no_grad():
        full.sigma[:, 0] += 0.1  # unequal apertures: the angle gets a gradient
    model(torch.randn(2, 2, 12, 12)).square().mean().backward()
    optimizer.step()
    assert not torch.equal(full.theta.detach(), theta_before)  # theta learns, unclamped
    for layer in (diag, full):
        bounds = torch.tensor(layer.sigma_bounds)
        assert bool((layer.sigma >= bounds[:, 0] - 1e-6).all() and (layer.sigma <= bounds[:, 1] + 1e-6).all())
    low, high = circle.sigma_bounds
    assert float(circle.sigma.detach().min()) >= low - 1e-7 and float(circle.sigma.detach().max()) <= high + 1e-7


def test_convert_and_fuse_timm_resnet18_with_full_covariance_exactly():
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        timm_aconv.convert_convs(model, sizes=None, covariance_type='full', sigma_init=0.5)
        layers = list(timm_aconv.adaptive_layers(model))
        assert len(layers) == 17 and all(layer.covariance_type == 'full' for layer in layers)
        assert layers[0].kernel_size == (7, 7) and layers[1].kernel_size == (3, 3)  # sizes=None: their own
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-4)
        for layer in layers:  # some learned ellipses: the fused model still computes the adaptive one
            layer.theta.uniform_(-1.5, 1.5)
            layer.sigma.uniform_(0.1, 0.5)
        adaptive = model(x)
        timm_aconv.fuse_convs(model)
        assert not list(timm_aconv.adaptive_layers(model))
        torch.testing.assert_close(model(x), adaptive, rtol=0, atol=1e-5)


@pytest.mark.parametrize('covariance_type', ['diag', 'full'])
def test_fuse_crops_elliptic_layers_per_axis_within_the_tolerance(covariance_type):
    """A 7×7 layer whose envelopes are narrow across the columns crops to 7×3 (or narrower), keeping all but
    crop_tol of the kernel's energy; the cropped convolution's padding keeps every output in place."""
    torch.manual_seed(0)
    layer = AdaptiveConv2d(3, 6, 7, padding=3, covariance_type=covariance_type)
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor([0.4, 0.06]).expand(6, 2))  # wide along the rows, narrow across
    x = torch.randn(2, 3, 12, 12)
    full = layer(x).detach()
    for crop_tol in (1e-2, 1e-3):
        cropped = timm_aconv.fuse_convs(layer, crop_tol=crop_tol)
        height, width = cropped.kernel_size
        assert height == 7 and width <= 3
        kernel = layer.product_kernel().detach()
        offset = (7 - width) // 2
        kept = float(kernel[..., offset : offset + width].square().sum())
        assert 1 - kept / float(kernel.square().sum()) <= crop_tol
        assert cropped.padding == (3, (width - 1) // 2)
        assert float((cropped(x) - full).norm() / full.norm()) <= 2 * crop_tol**0.5


def test_convert_like_brings_back_every_covariance_type_and_grid_from_a_state_dict():
    def plain():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(1, 2), nn.Conv1d(4 * 8, 4, 3, padding=1),
        ).eval()  # fmt: skip

    model = plain()
    timm_aconv.convert_convs(model, sizes=[5], include=['0'], covariance_type='full')
    timm_aconv.convert_convs(model, sizes=[(7, 3)], include=['2'], covariance_type='diag')
    timm_aconv.convert_convs(model, sizes=[5], include=['4'])
    timm_aconv.convert_convs(model, sizes=[5], dims=[1], covariance_type='diag')
    with torch.no_grad():
        model[0].theta.uniform_(-1, 1)
    x = torch.randn(2, 3, 8, 8)
    state_dict = {key: value.clone() for key, value in model.state_dict().items()}
    restored = timm_aconv.convert_like(plain(), state_dict)
    restored.load_state_dict(state_dict)  # strict
    kinds = [(layer.covariance_type, layer.kernel_size) for layer in timm_aconv.adaptive_layers(restored)]
    assert kinds == [('full', (5, 5)), ('diag', (7, 3)), ('spherical', (5, 5)), ('diag', (5,))]
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x))


@pytest.mark.parametrize('covariance_type', ['diag', 'full'])
def test_ordinary_weights_load_into_elliptic_layers_exactly(covariance_type):
    torch.manual_seed(0)
    ordinary = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    adaptive = nn.Sequential(
        AdaptiveConv2d(3, 4, 5, padding=2, covariance_type=covariance_type), nn.ReLU(),
        AdaptiveConv2d(4, 2, (7, 5), padding=(3, 2), covariance_type=covariance_type),
    ).eval()  # fmt: skip
    state_dict = timm_aconv.adapt_ordinary_weights(adaptive, ordinary.state_dict(), sigma_init=0.5)
    adaptive.load_state_dict(state_dict)  # strict: sigma (and theta) added
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(adaptive(x), ordinary(x), rtol=0, atol=1e-5)


def test_summary_and_learned_sizes_report_elliptic_layers_per_axis():
    model = nn.Sequential(
        AdaptiveConv2d(3, 4, 7, padding=3, covariance_type='diag'),
        AdaptiveConv2d(4, 4, (7, 3), padding=(3, 1)),
        AdaptiveConv2d(4, 4, 5, padding=2),
    )
    with torch.no_grad():
        model[0].sigma.copy_(torch.tensor([0.4, 0.06]).expand(4, 2))
        model[1].sigma.fill_(0.06)
    rows = timm_aconv.summary(model)
    assert [(row.grid_size, row.size_max) for row in rows[:2]] == [('7x7', '7x1'), ('7x3', '1x1')]
    assert rows[2].grid_size == 5 and isinstance(rows[2].size_max, int)
    learned = timm_aconv.learned_kernel_sizes(model, crop_tol=1e-3)
    elliptic, rectangular, circle = learned['0'], learned['1'], learned['2']
    assert elliptic.grid_size == (7, 7) and all(height == 7 and width <= 3 for height, width in elliptic.sizes)
    assert rectangular.grid_size == (7, 3) and all(len(size) == 2 for size in rectangular.sizes)
    assert isinstance(circle.grid_size, int) and all(isinstance(size, int) for size in circle.sizes)
    kernel = model[0].product_kernel().detach()
    for box, filter_kernel in zip(elliptic.sizes, kernel):  # every box within the tolerance
        window = tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip((7, 7), box))
        kept = float(filter_kernel[(slice(None), *window)].square().sum())
        assert 1 - kept / float(filter_kernel.square().sum()) <= 1e-3
    assert elliptic.kernel_flops == pytest.approx(sum(h * w for h, w in elliptic.sizes) / len(elliptic.sizes) / 49)
    assert len(elliptic.percentile(95)) == 2 and '7x' in str(learned)
    # the deployment tools take every kind: the exported windows are the learned boxes
    timm_aconv.set_train_crop(model, 1e-3)
    assert all(layer.train_crop_tol == 1e-3 for layer in model)
    assert model[0].crop_window[0] == 7 and model[0].crop_window[1] < 7 and len(set(model[2].crop_window)) == 1
    assert 0 < float(timm_aconv.estimated_kernel_flops(model)) < 1
    exported = timm_aconv.export_learned_sizes(model.eval(), crop_tol=1e-3)
    assert not list(timm_aconv.adaptive_layers(exported))


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # the TorchScript exporter needs no onnxscript
@pytest.mark.parametrize('dims', [1, 2, 3])
def test_fused_and_cropped_forms_export_to_onnx_torchscript_and_compile(dims, tmp_path):
    onnx = pytest.importorskip('onnx')
    from onnx.reference import ReferenceEvaluator

    torch.manual_seed(0)
    layer_type = {1: timm_aconv.AdaptiveConv1d, 2: AdaptiveConv2d, 3: timm_aconv.AdaptiveConv3d}[dims]
    covariance_type = 'full' if dims == 2 else 'diag'
    model = nn.Sequential(
        layer_type(2, 4, 5, padding='same', covariance_type=covariance_type), nn.ReLU(),
        layer_type(4, 3, (5,) * (dims - 1) + (3,), padding=2 if dims == 1 else 'same', covariance_type='diag'),
    ).eval()  # fmt: skip
    with torch.no_grad():
        model[0].sigma.uniform_(0.05, 0.3)
        if dims == 2:
            model[0].theta.uniform_(-1.5, 1.5)
    x = torch.randn(1, 2, *(7,) * dims)
    with torch.no_grad():
        expected = model(x)
        timm_aconv.fuse_convs(model, crop_tol=1e-3)
        assert not list(timm_aconv.adaptive_layers(model))
        assert float((model(x) - expected).norm() / expected.norm()) <= 2 * 1e-3**0.5
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        torch.testing.assert_close(torch.compile(model, backend='aot_eager')(x), expected)
    path = tmp_path / 'fused.onnx'
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=['input'])
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert sum(node.op_type == 'Conv' for node in graph.graph.node) == 2
    output = ReferenceEvaluator(graph).run(None, {'input': x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(output), expected, rtol=1e-4, atol=1e-5)


def test_the_elliptic_experiment_runs_algorithm_1_and_its_full_envelopes_turn(tmp_path):
    """docs/experiments.md's 2-D elliptic run, small: every covariance type trains through the engine, the
    table tests 'diag' and 'full' against 'spherical'; on the oriented bars a 'full' CNN's apertures split
    and its angles move."""
    from timm_aconv.experiments.oriented import (
        OrientedCompareConfig,
        oriented_bars,
        oriented_cnn,
        run_oriented_comparison,
    )

    config = OrientedCompareConfig(output_dir=str(tmp_path), epochs=1, repeats=2, train_samples=96, val_samples=64)
    result = run_oriented_comparison(config)
    assert {kind: len(values) for kind, values in result.peaks.items()} == {'spherical': 2, 'diag': 2, 'full': 2}
    assert [row['covariance_type'] for row in result.rows] == ['diag', 'full']
    assert result.markdown.count('\n| ') == 4 and '| full |' in result.markdown
    images, labels = oriented_bars(64, seed=0).tensors
    assert images.shape == (64, 1, 24, 24) and set(labels.tolist()) <= {0, 1, 2, 3}
    torch.manual_seed(0)
    model = oriented_cnn(7, 'full')
    first = model[0]
    optimizer = torch.optim.Adam(timm_aconv.param_groups(model), lr=0.02)
    for _ in range(15):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sigma = first.sigma.detach()
    assert float((sigma[:, 0] - sigma[:, 1]).abs().max()) > 1e-3
    assert float(first.theta.detach().abs().max()) > 1e-3
    with pytest.raises(timm_aconv.engine.ConfigError, match="covariance_types must include 'spherical'"):
        OrientedCompareConfig(covariance_types=['diag'])
