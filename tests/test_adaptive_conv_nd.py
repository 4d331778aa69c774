"""1-D and 3-D adaptive layers: the N-D envelope's formula, the layers' exactness, sigma, surgery

``normalized_envelope`` against ``U ∝ exp(-sum_a d_a² / (2 sigma_a² + 1e-8))`` with ``sum U² =`` the number of grid
points, for 1-D / 2-D / 3-D grids (square and rectangular), spherical and diag; gradcheck in sigma.
``AdaptiveConv1d`` / ``AdaptiveConv3d`` against the torch convolution of their product kernel for every
option, gradcheck on input / W / bias / sigma; per-axis clamp, parameter groups, the clamp after any
optimizer step; ``convert_convs(dims=...)`` exact with ``preserve=True`` and ``fuse_convs`` exact.
"""

import copy
import math
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_aconv
from timm_aconv import AdaptiveConv1d, AdaptiveConv3d
from timm_aconv.layers.envelope import grid_coordinates, normalized_envelope

GRIDS = [(3,), (7,), (5, 5), (7, 3), (3, 3, 3), (5, 3, 1)]


def reference_envelope(sigma: torch.Tensor, kernel_size) -> torch.Tensor:
    """The formula written out: per axis coordinates k/(n_a - 1) - 0.5, a Gaussian with one variance per
    axis, scaled so that the squares sum to the number of grid points."""
    axes = [torch.linspace(-0.5, 0.5, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
            for n in kernel_size]  # fmt: skip
    grids = torch.meshgrid(*axes, indexing='ij')
    sigma = sigma if sigma.ndim == 2 else sigma[:, None].expand(-1, len(kernel_size))
    exponent = sum(grid[None] / (2 * sigma[:, axis].view(-1, *[1] * len(kernel_size)) ** 2 + 1e-8)
                   for axis, grid in enumerate(g.square() for g in grids))  # fmt: skip
    raw = torch.exp(-exponent)
    cells = math.prod(kernel_size)
    scale = (cells / raw.square().flatten(1).sum(1)).sqrt()
    return raw * scale.view(-1, *[1] * len(kernel_size))


@pytest.mark.parametrize('kernel_size', GRIDS, ids=lambda size: 'x'.join(map(str, size)))
@pytest.mark.parametrize('covariance_type', ['spherical', 'diag'])
def test_envelope_matches_the_formula_and_keeps_theorem_3_1(kernel_size, covariance_type):
    torch.manual_seed(0)
    shape = (6,) if covariance_type == 'spherical' else (6, len(kernel_size))
    sigma = torch.rand(shape, dtype=torch.float64) * 2 + 0.05
    envelope = normalized_envelope(sigma, None, grid_coordinates(kernel_size, dtype=torch.float64))
    assert envelope.shape == (6, *kernel_size)
    torch.testing.assert_close(envelope, reference_envelope(sigma, kernel_size), rtol=1e-12, atol=1e-12)
    cells = math.prod(kernel_size)
    torch.testing.assert_close(envelope.square().flatten(1).sum(1), torch.full((6,), float(cells), dtype=torch.float64))
    # its derivatives in every sigma: autograd against finite differences
    coordinates = grid_coordinates(kernel_size, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda s: normalized_envelope(s, None, coordinates), (sigma.clone().requires_grad_(True),)
    )


def test_envelope_reference_values_and_the_2d_layers_envelope():
    # 1-D, 3 points at -0.5, 0, 0.5, sigma 0.5: raw (e^-0.5, 1, e^-0.5), squares summing to 3
    envelope = normalized_envelope(
        torch.tensor([0.5], dtype=torch.float64), None, grid_coordinates((3,), dtype=torch.float64)
    )
    edge = math.exp(-0.25 / (0.5 + 1e-8))
    scale = math.sqrt(3 / (1 + 2 * edge**2))
    torch.testing.assert_close(envelope[0], torch.tensor([edge, 1, edge], dtype=torch.float64) * scale)
    # a diag envelope with equal apertures is the spherical one; in 2-D, the square grid's is the 2-D layer's
    sigma = torch.tensor([0.1, 0.3, 2.0], dtype=torch.float64)
    coordinates = grid_coordinates((7, 7), dtype=torch.float64)
    torch.testing.assert_close(
        normalized_envelope(sigma[:, None].expand(-1, 2), None, coordinates),
        normalized_envelope(sigma, None, coordinates),
    )
    torch.testing.assert_close(normalized_envelope(sigma, None, coordinates), timm_aconv.gaussian_envelope(sigma, 7))
    # a diag envelope is narrow along the axis whose aperture is small
    envelope = normalized_envelope(torch.tensor([[0.05, 2.0]], dtype=torch.float64), None, coordinates)[0]
    assert envelope[3, 0] > 0.9 * envelope[3, 3] and envelope[0, 3] < 1e-6 * envelope[3, 3]


CONV_OPTIONS = [
    dict(padding=3),
    dict(padding='same'),
    dict(padding=0),
    dict(stride=2, padding=1),
    dict(dilation=2, padding=6),
    dict(groups=2, padding=3),
    dict(groups=4, padding=3),
    dict(padding=3, padding_mode='reflect'),
    dict(padding=3, padding_mode='circular'),
    dict(padding=3, bias=False),
]


@pytest.mark.parametrize('options', CONV_OPTIONS, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items()))
@pytest.mark.parametrize('covariance_type', ['spherical', 'diag'])
def test_conv1d_is_the_torch_convolution_of_its_product_kernel(options, covariance_type, check_reference_convolution):
    torch.manual_seed(0)
    layer = AdaptiveConv1d(4, 4, 7, covariance_type=covariance_type, dtype=torch.float64, **options)
    x = torch.randn(2, 4, 23, dtype=torch.float64)
    reference = nn.Conv1d(4, 4, 7, dtype=torch.float64, **options)
    check_reference_convolution(layer, reference, x)


@pytest.mark.parametrize('kernel_size', [3, (5, 3, 3), (3, 1, 3)], ids=str)
@pytest.mark.parametrize('covariance_type', ['spherical', 'diag'])
def test_conv3d_with_rectangular_grids_is_the_torch_convolution_of_its_product_kernel(kernel_size, covariance_type):
    torch.manual_seed(0)
    options = dict(padding='same', stride=1)
    layer = AdaptiveConv3d(2, 4, kernel_size, covariance_type=covariance_type, dtype=torch.float64, **options)
    x = torch.randn(1, 2, 6, 7, 5, dtype=torch.float64)
    expected = F.conv3d(x, layer.product_kernel(), layer.bias, padding='same')
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    assert layer(x).shape == (1, 4, 6, 7, 5)
    strided = AdaptiveConv3d(2, 4, kernel_size, stride=2, padding=1, covariance_type=covariance_type)
    assert strided(x.float()).shape == nn.Conv3d(2, 4, kernel_size, stride=2, padding=1)(x.float()).shape


@pytest.mark.parametrize('layer_type, size', [(AdaptiveConv1d, (9,)), (AdaptiveConv3d, (4, 5, 4))], ids=['1d', '3d'])
@pytest.mark.parametrize('covariance_type', ['spherical', 'diag'])
def test_gradcheck_in_input_weight_bias_and_sigma(layer_type, size, covariance_type):
    torch.manual_seed(0)
    layer = layer_type(2, 3, 3, padding=1, covariance_type=covariance_type, sigma_init=(0.2, 0.6), dtype=torch.float64)
    x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)

    def run(x, weight, bias, sigma):
        return torch.func.functional_call(layer, dict(weight=weight, bias=bias, sigma=sigma), (x,))

    params = [layer.weight.detach().clone().requires_grad_(True), layer.bias.detach().clone().requires_grad_(True),
              layer.sigma.detach().clone().requires_grad_(True)]  # fmt: skip
    assert torch.autograd.gradcheck(run, (x, *params))


def test_sigma_shapes_bounds_clamp_and_parameter_groups():
    spherical = AdaptiveConv3d(2, 4, (7, 3, 3))
    diag = AdaptiveConv3d(2, 4, (7, 3, 3), covariance_type='diag')
    assert spherical.sigma.shape == (4,) and spherical.sigma_bounds == (1 / 7, 7.0)
    assert diag.sigma.shape == (4, 3) and diag.sigma_bounds == ((1 / 7, 7.0), (1 / 3, 3.0), (1 / 3, 3.0))
    assert torch.equal(diag.sigma[:, 0], torch.linspace(0.1, 0.5, 4))  # sigma_init spread over the filters
    with torch.no_grad():
        diag.sigma.fill_(100.0)
        diag.sigma[0] = 1e-3
    diag.clamp_sigma_()
    assert diag.sigma[1].tolist() == [7.0, 3.0, 3.0] and diag.sigma[0].tolist() == pytest.approx([1 / 7, 1 / 3, 1 / 3])
    one_pair = AdaptiveConv1d(1, 2, 5, covariance_type='diag', sigma_bounds=(0.05, 5))
    assert one_pair.sigma_bounds == ((0.05, 5.0),)
    model = nn.Sequential(
        AdaptiveConv1d(2, 4, 7, padding=3), nn.ReLU(), AdaptiveConv1d(4, 4, 5, covariance_type='diag')
    )
    groups = {group['name']: group['params'] for group in timm_aconv.param_groups(model, weight_decay=1e-4)}
    assert {id(param) for param in groups['sigma']} == {id(model[0].sigma), id(model[2].sigma)}
    assert len(list(timm_aconv.adaptive_layers(model))) == 2
    # the clamp after any optimizer's step, per axis for 'diag'
    optimizer = torch.optim.SGD(model.parameters(), lr=1e3)
    model(torch.randn(2, 2, 16)).square().mean().backward()
    optimizer.step()
    for layer in timm_aconv.adaptive_layers(model):
        low, high = layer.sigma_bounds if layer.covariance_type == 'spherical' else layer.sigma_bounds[0]
        sigma = layer.sigma.detach()
        assert float(sigma.min()) >= low - 1e-7 and float(sigma.max()) <= high + 1e-7
    assert timm_aconv.clamp_sigmas_(model) == 2


def test_state_dict_copies_torchscript_meta_and_to_empty():
    layer = AdaptiveConv3d(2, 3, (5, 3, 3), padding=(2, 1, 1), covariance_type='diag')
    assert list(layer.state_dict()) == ['weight', 'bias', 'sigma']
    x = torch.randn(1, 2, 5, 5, 5)
    for copied in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        torch.testing.assert_close(copied(x), layer(x))
    torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))
    torch.testing.assert_close(torch.jit.script(layer.fuse())(x), layer(x))
    meta = AdaptiveConv1d(2, 3, 7, device='meta')
    assert meta(torch.randn(1, 2, 9, device='meta')).shape == (1, 3, 3)
    empty = meta.to_empty(device='cpu')
    torch.testing.assert_close(empty.grid_coordinates, grid_coordinates((7,)))
    assert 'AdaptiveConv3d(2, 3, kernel_size=(5, 3, 3)' in repr(layer) and "covariance_type='diag'" in repr(layer)


def _signal_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 8, 5, padding=2, dilation=1), nn.ReLU(),
        nn.Conv1d(8, 4, 1), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
    ).eval()  # fmt: skip


def _volume_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, (3, 1, 3), padding=(1, 0, 1), stride=2),
        nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
    ).eval()  # fmt: skip


@pytest.mark.parametrize('covariance_type', ['spherical', 'diag'])
def test_convert_convs_keeps_1d_and_3d_models_exactly_and_fuse_gives_them_back(covariance_type):
    for build, dims, x, count in (
        (_signal_model, 1, torch.randn(2, 2, 30), 2),
        (_volume_model, 3, torch.randn(1, 1, 8, 8, 8), 2),
    ):
        model = build()
        with torch.no_grad():
            before = model(x)
            timm_aconv.convert_convs(model, sizes=[7], dims=[dims], covariance_type=covariance_type)
            layers = list(timm_aconv.adaptive_layers(model))
            assert len(layers) == count and all(layer.kernel_size == (7,) * dims for layer in layers)
            assert all(layer.covariance_type == covariance_type for layer in layers)
            torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
            timm_aconv.fuse_convs(model)
            assert not list(timm_aconv.adaptive_layers(model))
            torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_convert_convs_leaves_conv1d_and_conv3d_alone_by_default_and_names_what_is_not_built():
    model = _signal_model()
    with pytest.raises(ValueError, match='convert_convs selected no layer'):
        timm_aconv.convert_convs(model, sizes=[5])  # dims=(2,): an ECA attention's Conv1d stays a Conv1d
    with pytest.raises(ValueError, match=r"for layer '0' \(AdaptiveConv1d\), got 'full' \('full', a rotated"):
        timm_aconv.convert_convs(_signal_model(), sizes=[5], dims=[1], covariance_type='full')
    with pytest.raises(ValueError, match=r'dims must name convolution dimensions among 1, 2, 3'):
        timm_aconv.convert_convs(model, dims=[4])
    for bad, match in (
        (dict(kernel_size=4), r'kernel_size must be an odd int or 3 odd sides'),
        (dict(kernel_size=(7, 3)), r'kernel_size must be an odd int or 3 odd sides'),
        (dict(kernel_size=3, covariance_type='full'), r"covariance_type must be one of 'spherical', 'diag'"),
        (dict(kernel_size=3, covariance_type='diag', sigma_bounds=[(0.1, 3), (0.2, 3)]), r'one pair per axis \(3\)'),
        (dict(kernel_size=3, sigma_bounds=(3, 1)), r'sigma_bounds must satisfy 0 < low < high'),
    ):
        with pytest.raises(ValueError, match=match):
            AdaptiveConv3d(1, 2, **bad)


@pytest.mark.parametrize('crop_tol', [1e-2, 1e-3])
def test_fuse_crops_1d_and_3d_layers_per_axis_within_the_tolerance(crop_tol):
    torch.manual_seed(0)
    layer = AdaptiveConv3d(2, 4, (7, 7, 5), padding=(3, 3, 2), covariance_type='diag')
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor([0.08, 0.3, 0.1]).expand(4, 3))  # narrow, wide, narrow
    x = torch.randn(1, 2, 9, 9, 7)
    cropped = timm_aconv.fuse_convs(layer, crop_tol=crop_tol)
    assert type(cropped) is nn.Conv3d and cropped.kernel_size in ((3, 7, 3), (3, 5, 3), (3, 7, 1), (3, 5, 1))
    kernel = layer.product_kernel().detach()
    window = tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(layer.kernel_size, cropped.kernel_size))
    kept = float(kernel[(slice(None), slice(None), *window)].square().sum())
    assert 0 <= 1 - kept / float(kernel.square().sum()) <= crop_tol
    assert cropped.padding == tuple(p - (n - m) // 2 for p, n, m in zip((3, 3, 2), (7, 7, 5), cropped.kernel_size))
    full = layer(x).detach()
    assert cropped(x).shape == full.shape
    assert float((cropped(x) - full).norm() / full.norm()) <= 2 * crop_tol**0.5
    signal = AdaptiveConv1d(2, 4, 9, padding=4, sigma_init=0.05)
    assert timm_aconv.fuse_convs(signal, crop_tol=crop_tol).kernel_size[0] < 9
    # no padding to give back: the window cannot shrink without moving the outputs
    assert timm_aconv.fuse_convs(AdaptiveConv1d(2, 4, 9, sigma_init=0.05), crop_tol=crop_tol).kernel_size == (9,)


def test_a_converted_3d_network_trains_its_apertures():
    """A short run on generated volumes (a bright blob of a random size in noise, classified small/large):
    the loss falls and the apertures move, and the trained model fuses to the same outputs."""
    torch.manual_seed(0)
    coords = torch.stack(torch.meshgrid(*[torch.arange(8.0)] * 3, indexing='ij')) - 3.5
    radius = torch.randint(0, 2, (64,))
    volumes = torch.stack([torch.exp(-coords.square().sum(0) / (2 * (1.0 + 2.0 * r) ** 2)) for r in radius.tolist()])
    volumes = (volumes + 0.1 * torch.randn_like(volumes)).unsqueeze(1)
    model = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2),
    )  # fmt: skip
    timm_aconv.convert_convs(model, sizes=[5], dims=[3], covariance_type='diag', preserve=False)
    sigma_before = torch.cat([layer.sigma.detach().flatten().clone() for layer in timm_aconv.adaptive_layers(model)])
    optimizer = torch.optim.Adam(timm_aconv.param_groups(model), lr=0.02)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(volumes), radius)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    sigma_after = torch.cat([layer.sigma.detach().flatten() for layer in timm_aconv.adaptive_layers(model)])
    assert losses[-1] < 0.5 * losses[0]
    assert float((sigma_after - sigma_before).abs().max()) > 0.05
    model.eval()
    with torch.no_grad():
        before = model(volumes[:4])
        timm_aconv.fuse_convs(model)
        torch.testing.assert_close(model(volumes[:4]), before, rtol=0, atol=1e-5)


def test_summary_lists_1d_and_3d_layers_with_per_axis_sizes():
    model = nn.Sequential(
        AdaptiveConv1d(2, 4, 7, padding=3),
        AdaptiveConv3d(1, 4, (7, 3, 3), covariance_type='diag', sigma_init=(0.1, 0.5)),
        timm_aconv.AdaptiveConv2d(1, 2, 5),
    )
    rows = timm_aconv.summary(model)
    assert [(row.name, row.grid_size) for row in rows] == [('0', '7'), ('1', '7x3x3'), ('2', 5)]
    # 7-wide axis: sigma 0.1 / 0.233 / 0.5 need 3 / 5 / 7 points for 95% of the energy; a 3-wide axis
    # (spacing 0.5) holds 95% in its centre point up to sigma ~0.3
    assert (rows[0].size_min, rows[0].size_median, rows[0].size_max) == ('3', '5', '7')
    assert (rows[1].size_min, rows[1].size_median, rows[1].size_max) == ('3x1x1', '5x1x1', '7x3x3')
    assert '1      7x3x3  4        0.100      0.233   0.500  3x1x1 / 5x1x1 / 7x3x3' in str(rows)


def test_compiled_1d_and_3d_layers_train_as_eager_without_graph_breaks():
    torch._dynamo.reset()
    for layer, x in (
        (AdaptiveConv1d(2, 4, 7, padding=3, covariance_type='diag'), torch.randn(2, 2, 16)),
        (AdaptiveConv3d(2, 4, (5, 3, 3), padding='same'), torch.randn(1, 2, 6, 6, 6)),
    ):
        compiled = torch.compile(layer, backend='aot_eager', fullgraph=True)  # fullgraph: a break raises
        output = compiled(x)
        torch.testing.assert_close(output, layer(x))
        (grad_sigma,) = torch.autograd.grad(output.square().sum(), layer.sigma)
        (reference,) = torch.autograd.grad(layer(x).square().sum(), layer.sigma)
        torch.testing.assert_close(grad_sigma, reference)
    torch._dynamo.reset()


def test_monai_unet_made_adaptive_trains_through_the_engine_and_fuses_back(tmp_path):
    """The 3-D experiment of docs/experiments.md, short: MONAI's UNet with its Conv3d layers adaptive
    ('diag', 5×5×5) on generated volumes, trained by the engine: the loss falls, the apertures move, the
    clamp keeps them in their per-axis bounds, and the fused network computes the same segmentation."""
    from monai.networks.nets import UNet
    from torch.utils.data import DataLoader, TensorDataset

    from timm_aconv.engine import EngineConfig, SegmentationMetric, Trainer, set_seed

    generator = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 12)] * 3, indexing='ij'))[None]
    radii = 0.2 + 0.6 * torch.rand(48, 3, 1, 1, 1, generator=generator)
    inside = ((grid / radii) ** 2).sum(1) <= 1
    data = TensorDataset(
        (inside.float() + 0.8 * torch.randn(48, 12, 12, 12, generator=generator))[:, None], inside.long()
    )
    set_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    timm_aconv.convert_convs(net, sizes=[5], dims=[3], covariance_type='diag', preserve=False, sigma_init=(0.25, 0.5))
    layers = list(timm_aconv.adaptive_layers(net))
    assert len(layers) == 7 and all(isinstance(layer, AdaptiveConv3d) for layer in layers)
    assert timm_aconv.clamp_sigmas_(net) == 7  # inside the bounds already: what moves them below is learning
    sigma_before = torch.cat([layer.sigma.detach().flatten().clone() for layer in layers])
    config = EngineConfig(
        output_dir=str(tmp_path), epochs=3, optimizer='adam', lr=0.01, scheduler='constant', monitor='val_miou',
        monitor_mode='max', progress=False, print_epochs=False, log_with='none', save_best=False, save_every=0,
    )  # fmt: skip
    loader = DataLoader(data, batch_size=8, shuffle=True)
    history = Trainer(
        net, loader, DataLoader(data, batch_size=8), config, nn.CrossEntropyLoss(), SegmentationMetric(2)
    ).fit()
    assert history[-1]['train_loss'] < 0.5 * history[0]['train_loss']
    sigma_after = torch.cat([layer.sigma.detach().flatten() for layer in layers])
    assert float((sigma_after - sigma_before).abs().max()) > 0.05
    for layer in layers:
        bounds = torch.tensor(layer.sigma_bounds)
        assert bool(((layer.sigma >= bounds[:, 0]) & (layer.sigma <= bounds[:, 1])).all())
    net.eval()
    with torch.no_grad():
        before = net(data.tensors[0][:2])
        timm_aconv.fuse_convs(net)
        torch.testing.assert_close(net(data.tensors[0][:2]), before, rtol=0, atol=1e-5)


def test_signal_comparison_runs_algorithm_1_in_one_dimension(tmp_path):
    """The 1-D experiment's machinery, small: generated waveforms, both arms per kernel size and repeat
    through the engine, the paper's table with 1-D sizes."""
    from timm_aconv.engine import ConfigError
    from timm_aconv.experiments.signals import (
        WAVEFORMS,
        SignalCompareConfig,
        run_signal_comparison,
        signal_cnn,
        waveforms,
    )

    data = waveforms(64, length=96, seed=3)
    signals, labels = data.tensors
    assert signals.shape == (64, 1, 96) and set(labels.tolist()) == set(range(len(WAVEFORMS)))
    assert torch.equal(waveforms(64, length=96, seed=3).tensors[0], signals)  # a seed draws the same set
    clean = waveforms(4, length=64, noise=0.0, periods=(8.0, 8.001), seed=0).tensors[0]
    assert float(clean.abs().max()) <= 1.5 + 1e-6  # amplitudes in [0.5, 1.5], no noise
    adaptive, ordinary = signal_cnn(9, adaptive=True), signal_cnn(9, adaptive=False)
    assert sum(isinstance(m, AdaptiveConv1d) for m in adaptive.modules()) == 3
    assert sum(type(m) is nn.Conv1d for m in ordinary.modules()) == 3
    assert adaptive(signals[:2]).shape == (2, len(WAVEFORMS))
    config = SignalCompareConfig(
        output_dir=str(tmp_path), epochs=1, repeats=2, kernel_sizes=[3, 5], train_samples=64, val_samples=32
    )
    result = run_signal_comparison(config)
    assert {arm: {size: len(peaks) for size, peaks in by_size.items()} for arm, by_size in result.peaks.items()} == {
        'CONV': {3: 2, 5: 2},
        'ACONV': {3: 2, 5: 2},
    }
    assert '| kernel | CONV mean±std (%)' in result.markdown and '| best CONV ' in result.markdown
    assert '| 3×3' not in result.markdown and ('| 3 ' in result.markdown or '| 3 (best)' in result.markdown)
    with pytest.raises(ConfigError, match=r'kernel_sizes must be odd sizes >= 3'):
        SignalCompareConfig(kernel_sizes=[4])
    with pytest.raises(ConfigError, match=r'periods must be \(shortest, longest\)'):
        SignalCompareConfig(periods=(8.0, 4.0))
