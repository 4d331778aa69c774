"""export_learned_sizes / learned_kernel_sizes / plain_model_from_learned through the public API."""

import copy
import math
import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import timm_aconv
import timm_aconv.surgery.export as export_module
from timm_aconv import AdaptiveConv2d, MixedSizeConv, export_learned_sizes, learned_kernel_sizes
from timm_aconv.utils import Latency

pytestmark = pytest.mark.usefixtures('one_torch_thread')

# sigma whose envelope keeps all but ~1e-3 of its energy in a 1×1 / 3×3 / 5×5 window of a 7×7 grid, and one
# that needs the full grid
MIXED_SIGMAS = (0.03, 0.08, 0.13, 0.5)


def set_sigmas(model: nn.Module, values=MIXED_SIGMAS) -> nn.Module:
    with torch.no_grad():
        for layer in timm_aconv.adaptive_layers(model):
            layer.sigma_bounds = (0.01, float(layer.grid_size))
            layer.sigma.copy_(torch.tensor(values).repeat(layer.out_channels)[: layer.out_channels])
    return model


def windowed_kernel(layer: AdaptiveConv2d, crop_tol: float):
    """The product kernel with each filter zeroed outside its learned window, and the learned sizes."""
    kernel = layer.product_kernel().detach()
    sizes = learned_kernel_sizes(layer, crop_tol)['(model)'].sizes
    mask = torch.zeros_like(kernel)
    grid = kernel.shape[-1]
    for filter_index, size in enumerate(sizes):
        trim = (grid - size) // 2
        mask[filter_index, :, trim : trim + size, trim : trim + size] = 1
    return kernel * mask, sizes


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return float((output - reference).norm() / reference.norm())


LAYER_OPTIONS = [
    dict(padding=3),
    dict(padding='same', bias=False),
    dict(padding='valid'),
    dict(padding=1, stride=2),  # less padding than the crop frees: the small buckets trim their input
    dict(padding=6, dilation=2),
    dict(padding=3, padding_mode='reflect'),
    dict(padding=3, padding_mode='circular', stride=2),
    dict(padding=3, groups=4),  # grouped: filters of one size in every group
    dict(padding=3, groups=8, in_channels=8),  # depthwise
    dict(padding=3, groups=2, out_channels=12),
]


@pytest.mark.parametrize('options', LAYER_OPTIONS, ids=lambda options: '-'.join(f'{k}={v}' for k, v in options.items()))
def test_exported_layer_is_the_windowed_convolution(options):
    options = dict(options)
    in_channels, out_channels = options.pop('in_channels', 8), options.pop('out_channels', 8)
    torch.manual_seed(0)
    layer = set_sigmas(AdaptiveConv2d(in_channels, out_channels, 7, **options))
    x = torch.randn(2, in_channels, 13, 11)
    kernel, sizes = windowed_kernel(layer, 1e-3)
    assert len(set(sizes)) == 4
    exported = export_learned_sizes(copy.deepcopy(layer), crop_tol=1e-3)
    assert isinstance(exported, MixedSizeConv) and exported.out_channels == out_channels
    assert sorted({sides[0] for sides, _ in exported.bucket_sizes}) == sorted(set(sizes))
    with torch.no_grad():
        torch.testing.assert_close(exported(x), layer._conv_forward(x, kernel, layer.bias), rtol=0, atol=2e-6)
        single = export_learned_sizes(copy.deepcopy(layer), crop_tol=1e-3, strategy='single')
        torch.testing.assert_close(single(x), layer(x), rtol=0, atol=2e-6)  # the largest learned size is the grid


def test_each_filter_keeps_all_but_crop_tol_and_white_noise_error_is_its_square_root():
    torch.manual_seed(0)
    layer = set_sigmas(AdaptiveConv2d(16, 32, 7, padding=3), (0.05, 0.07, 0.09, 0.11, 0.13, 0.16, 0.2))
    full = layer.product_kernel().detach()
    x = torch.randn(4, 16, 64, 64)  # uncorrelated pixels
    for crop_tol in (1e-2, 1e-3, 1e-4):
        kernel, _ = windowed_kernel(layer, crop_tol)
        kept = kernel.square().sum((1, 2, 3)) / full.square().sum((1, 2, 3))
        assert float(kept.min()) >= 1 - crop_tol
        removed = 1 - float(kernel.square().sum() / full.square().sum())
        with torch.no_grad():
            error = relative_error(export_learned_sizes(copy.deepcopy(layer), crop_tol)(x), layer(x))
        assert error <= math.sqrt(crop_tol)
        assert error == pytest.approx(math.sqrt(removed), rel=0.15)


def test_sizes_round_up_to_the_allowed_list_and_one_size_is_one_plain_conv():
    torch.manual_seed(0)
    layer = set_sigmas(AdaptiveConv2d(4, 8, 7, padding=3))
    exported = export_learned_sizes(copy.deepcopy(layer), sizes=(3, 7))
    assert {sides for sides, _ in exported.bucket_sizes} == {(3, 3), (7, 7)}
    narrow = set_sigmas(AdaptiveConv2d(4, 8, 7, padding=3), (0.08,))
    single = export_learned_sizes(narrow)
    assert type(single) is nn.Conv2d and single.kernel_size == (3, 3) and single.padding == (1, 1)


# every other kind: a box per filter, one side per axis
KIND_LAYERS = {
    '2d-diag': lambda: timm_aconv.AdaptiveConv2d(6, 8, 7, padding=3, covariance_type='diag'),
    '2d-full': lambda: timm_aconv.AdaptiveConv2d(6, 8, 7, padding=3, covariance_type='full'),
    '2d-rectangular': lambda: timm_aconv.AdaptiveConv2d(6, 8, (7, 3), padding=(3, 1), stride=2, groups=2),
    '1d-spherical': lambda: timm_aconv.AdaptiveConv1d(6, 8, 7, padding=3, padding_mode='reflect'),
    '1d-diag': lambda: timm_aconv.AdaptiveConv1d(6, 8, 9, padding='same', covariance_type='diag', dilation=2),
    '3d-spherical': lambda: timm_aconv.AdaptiveConv3d(6, 8, 5, padding=2),
    '3d-diag': lambda: timm_aconv.AdaptiveConv3d(6, 8, (5, 5, 3), padding='valid', covariance_type='diag'),
}


def _spread_apertures(layer: nn.Module) -> nn.Module:
    """Apertures that give the filters boxes of several sizes and shapes (below the default lower bound)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        layer.sigma.copy_(torch.empty(layer.sigma.shape).uniform_(0.04, 0.4, generator=generator))
        if layer.theta is not None:
            layer.theta.uniform_(-3.0, 3.0, generator=generator)
    return layer


def box_windowed_kernel(layer: nn.Module, crop_tol: float):
    """The product kernel with each filter zeroed outside its learned box, and the boxes."""
    kernel = layer.product_kernel().detach()
    row = learned_kernel_sizes(layer, crop_tol)['(model)']
    boxes = [size if isinstance(size, tuple) else (size,) * (kernel.dim() - 2) for size in row.sizes]
    mask = torch.zeros_like(kernel)
    for filter_index, box in enumerate(boxes):
        window = tuple(
            slice((side - kept) // 2, (side - kept) // 2 + kept) for side, kept in zip(kernel.shape[2:], box)
        )
        mask[(filter_index, slice(None), *window)] = 1
    return kernel * mask, boxes


@pytest.mark.parametrize('kind', list(KIND_LAYERS))
def test_every_kind_exports_each_filter_at_its_box_within_the_bound(kind):
    torch.manual_seed(0)
    layer = _spread_apertures(KIND_LAYERS[kind]()).eval()
    kernel, boxes = box_windowed_kernel(layer, 1e-3)
    assert len(set(boxes)) >= 2  # filters of different boxes: several buckets
    full = layer.product_kernel().detach()
    kept = kernel.square().sum(tuple(range(1, kernel.dim()))) / full.square().sum(tuple(range(1, kernel.dim())))
    assert float(kept.min()) >= 1 - 1e-3  # each filter keeps all but crop_tol of its energy
    x = torch.randn(2, 6, *([13] * (kernel.dim() - 2)))
    exported = export_learned_sizes(copy.deepcopy(layer), crop_tol=1e-3)
    assert not list(timm_aconv.adaptive_layers(exported))
    with torch.no_grad():
        # exactly the convolution with the windowed kernels, so its error is the dropped energy's
        torch.testing.assert_close(exported(x), layer._conv_forward(x, kernel, layer.bias), rtol=0, atol=2e-6)
        assert relative_error(exported(x), layer(x)) <= math.sqrt(1e-3)
        single = export_learned_sizes(copy.deepcopy(layer), crop_tol=1e-3, strategy='single')
        assert relative_error(single(x), layer(x)) <= math.sqrt(1e-3)
    if kind.startswith(('2d', '3d-diag')) and 'spherical' not in kind:
        assert any(len(set(box)) > 1 for box in boxes)  # boxes, not squares


def test_a_diag_resnet_and_a_3d_model_deploy_at_their_learned_sizes():
    torch.manual_seed(0)
    model = timm.create_model('aconv_resnet20', covariance_type='diag', sigma_init=(0.05, 0.2), sigma_bounds=(0.05, 7))
    model = _spread_apertures_all(model).eval()
    x = torch.randn(2, 3, 32, 32)
    learned = learned_kernel_sizes(model, 1e-3)
    assert learned.kernel_flops() < 0.8 and all(row.per_axis for row in learned.values())
    exported = export_learned_sizes(copy.deepcopy(model), crop_tol=1e-3)
    with torch.no_grad():
        assert relative_error(exported(x), model(x)) <= 2 * math.sqrt(1e-3)
    volume = nn.Sequential(
        timm_aconv.AdaptiveConv3d(2, 8, 5, padding=2), nn.BatchNorm3d(8), nn.ReLU(),
        timm_aconv.AdaptiveConv3d(8, 4, (5, 3, 3), padding=(2, 1, 1), covariance_type='diag'),
    )  # fmt: skip
    volume = _spread_apertures_all(volume).eval()
    cube = torch.randn(1, 2, 9, 9, 9)
    exported = export_learned_sizes(copy.deepcopy(volume), crop_tol=1e-3)
    assert any(isinstance(module, MixedSizeConv) for module in exported.modules())
    with torch.no_grad():
        assert relative_error(exported(cube), volume(cube)) <= 2 * math.sqrt(1e-3)


def _spread_apertures_all(model: nn.Module) -> nn.Module:
    for layer in timm_aconv.adaptive_layers(model):
        _spread_apertures(layer)
    return model


@pytest.fixture(scope='module')
def trained_digits_cnn():
    """A tiny simple CNN trained 150 steps on digits (8×8) with a size budget: filters of several sizes."""
    from timm_aconv.experiments.datasets import build_classification_data

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train_set, val_set, _ = build_classification_data('digits')  # native 8×8
    images = torch.stack([train_set[i][0] for i in range(len(train_set))])
    labels = torch.tensor([train_set[i][1] for i in range(len(train_set))])
    torch.manual_seed(0)
    model = timm.create_model(
        'aconv_simple_cnn', img_size=8, in_chans=1, num_classes=10, width=8, hidden_size=32, sigma_bounds=(0.05, 7)
    )
    optimizer = torch.optim.SGD(timm_aconv.param_groups(model), lr=0.05, momentum=0.9)
    timm_aconv.register_sigma_clamp(optimizer, model)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        index = torch.randint(0, len(images), (32,), generator=generator)
        loss = F.cross_entropy(model(images[index]), labels[index]) + timm_aconv.size_penalty(model, 0.3)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    val_images = torch.stack([val_set[i][0] for i in range(len(val_set))])
    val_labels = torch.tensor([val_set[i][1] for i in range(len(val_set))])
    return model.eval(), val_images, val_labels


def test_trained_model_exports_within_the_bound(trained_digits_cnn):
    model, images, _labels = trained_digits_cnn
    learned = learned_kernel_sizes(model, 1e-3)
    assert all(len(set(row.sizes)) >= 2 for row in learned.values())  # the filters of each layer differ
    with torch.no_grad():
        logits = model(images)
        errors = {}
        for crop_tol in (1e-2, 1e-3, 1e-4):
            exported = export_learned_sizes(copy.deepcopy(model), crop_tol)
            assert not any(isinstance(module, AdaptiveConv2d) for module in exported.modules())
            exported_logits = exported(images)
            errors[crop_tol] = relative_error(exported_logits, logits)
            # each exported layer adds at most ~sqrt(crop_tol) relative error (first order: they add up)
            assert errors[crop_tol] <= 2 * math.sqrt(crop_tol)
            agree = (exported_logits.argmax(1) == logits.argmax(1)).float().mean()
            assert float(agree) >= 0.99
    assert errors[1e-2] >= errors[1e-3] >= errors[1e-4] and errors[1e-2] > errors[1e-4]
    assert learned.kernel_flops() < 0.5  # trained under a 0.3 budget (estimated from sigma)


def test_learned_kernel_sizes_report(trained_digits_cnn):
    layer = set_sigmas(AdaptiveConv2d(2, 8, 7, padding=3))
    row = learned_kernel_sizes(layer)['(model)']
    assert row.sizes == [1, 3, 5, 7] * 2
    assert row.counts == {1: 2, 3: 2, 5: 2, 7: 2}
    assert row.percentile(95) == 7 and row.percentile(50) == 5 and row.percentile(25) == 3 and row.percentile(0) == 1
    assert row.kernel_flops == pytest.approx((1 + 9 + 25 + 49) / 4 / 49)
    model, _, _ = trained_digits_cnn
    learned = learned_kernel_sizes(model)
    assert list(learned) == ['conv1', 'conv2']
    table = str(learned)
    assert 'kernel FLOPs' in table and 'conv2' in table
    # per output pixel, conv2 (8 input channels) weighs 8x conv1 (1 input channel)
    expected = (learned['conv1'].kernel_flops * 1 + learned['conv2'].kernel_flops * 8) / 9
    assert learned.kernel_flops() == pytest.approx(expected)


def test_folding_the_permutation_matches_gathering_on_cifar_and_timm_resnets():
    torch.manual_seed(0)
    cifar = set_sigmas(timm.create_model('aconv_resnet8', widths=(8, 16, 16), num_classes=3)).eval()
    resnet = set_sigmas(
        timm_aconv.convert_convs(timm.create_model('resnet10t', num_classes=3), sizes=[5], preserve=False)
    ).eval()
    for model, x, folded_names in (
        (cifar, torch.randn(2, 3, 16, 16), {f'stages.{i}.0.conv1' for i in range(3)}),
        # resnet10t's deep stem: conv -> bn -> act -> conv twice
        (resnet, torch.randn(2, 3, 32, 32), {'conv1.0', 'conv1.3'} | {f'layer{i}.0.conv1' for i in range(1, 5)}),
    ):
        with torch.no_grad():
            reference = model(x)
            folded = export_learned_sizes(copy.deepcopy(model))
            gathered = export_learned_sizes(copy.deepcopy(model), fold_permutation=False)
            torch.testing.assert_close(folded(x), gathered(x), rtol=0, atol=2e-5)
            assert relative_error(folded(x), reference) < 0.05
        mixed = {name: module for name, module in folded.named_modules() if isinstance(module, MixedSizeConv)}
        # block-internal conv1 -> bn1 -> act -> conv2: permuted once; conv2 feeds a residual add: gathered
        assert {name for name, module in mixed.items() if not module.reorder_output} == folded_names
        assert all(module.reorder_output for module in gathered.modules() if isinstance(module, MixedSizeConv))


class SharedConv(nn.Module):
    """One adaptive conv called twice (under two names), each call followed by BN -> ReLU -> conv."""

    def __init__(self):
        super().__init__()
        self.shared = AdaptiveConv2d(4, 4, 7, padding=3)
        self.alias = self.shared
        self.bn, self.head = nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.alias(torch.relu(self.shared(x))))))


def test_a_shared_layer_is_exported_once_and_gathers():
    torch.manual_seed(0)
    model = set_sigmas(SharedConv()).eval()
    x = torch.randn(2, 4, 9, 9)
    exported = export_learned_sizes(copy.deepcopy(model))
    assert exported.shared is exported.alias and isinstance(exported.shared, MixedSizeConv)
    assert exported.shared.reorder_output  # called twice: its output order cannot move into one consumer
    with torch.no_grad():
        assert relative_error(exported(x), model(x)) < 0.02


def test_feature_outputs_keep_their_channel_order():
    torch.manual_seed(0)
    model = set_sigmas(timm.create_model('aconv_simple_cnn', img_size=8, in_chans=1, width=8, hidden_size=16)).eval()
    x = torch.randn(2, 1, 8, 8)
    exported = export_learned_sizes(copy.deepcopy(model))
    with torch.no_grad():
        for before, after in zip(
            model.forward_intermediates(x, intermediates_only=True),
            exported.forward_intermediates(x, intermediates_only=True),
        ):
            assert relative_error(after, before) < 0.01  # conv1 -> act1 is a feature: gathered, not folded


def test_auto_picks_the_faster_strategy_per_layer(monkeypatch):
    torch.manual_seed(0)
    model = set_sigmas(timm.create_model('aconv_resnet8', widths=(8, 16, 16), num_classes=3)).eval()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match='example_inputs'):
        export_learned_sizes(copy.deepcopy(model), strategy='auto')
    timed = []

    def fake_latency(candidates, rounds):
        timed.append(rounds)
        faster = 'single' if len(timed) % 2 else 'bucketed'  # alternate the winner layer by layer
        return {name: Latency(1.0, 0.5 if name == faster else 1.0, rounds, 1) for name in candidates}

    monkeypatch.setattr(export_module, 'round_robin_latency', fake_latency)
    auto = export_learned_sizes(copy.deepcopy(model), strategy='auto', example_inputs=x, timing_rounds=3)
    layers = [
        module
        for name, module in auto.named_modules()
        if isinstance(module, MixedSizeConv) or (isinstance(module, nn.Conv2d) and '.buckets.' not in name)
    ]
    assert len(timed) == len(layers) == 7 and set(timed) == {3}
    assert [isinstance(layer, MixedSizeConv) for layer in layers] == [i % 2 == 1 for i in range(7)]
    with torch.no_grad():
        assert relative_error(auto(x), model(x)) < 0.05


def test_auto_really_times():
    torch.manual_seed(0)
    layer = set_sigmas(AdaptiveConv2d(4, 8, 7, padding=3))
    exported = export_learned_sizes(layer, strategy='auto', example_inputs=torch.randn(1, 4, 8, 8), timing_rounds=1)
    assert isinstance(exported, (nn.Conv2d, MixedSizeConv))


def _exportable_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        AdaptiveConv2d(2, 8, 5, padding=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),  # folded into the next conv
        AdaptiveConv2d(8, 8, 5, padding=2, bias=False),
        nn.ReLU(),
        AdaptiveConv2d(8, 8, 5, padding=1, groups=4),
        nn.ReLU(),  # grouped, trims its input
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 3),
    )
    return set_sigmas(model, (0.03, 0.1, 0.2, 0.5)).eval()


def test_exported_model_scripts_traces_and_compiles():
    model = _exportable_model()
    x = torch.randn(2, 2, 8, 8)
    exported = export_learned_sizes(copy.deepcopy(model))
    # conv -> BN -> act -> conv and grouped conv -> act -> flatten -> linear: folded;
    # conv -> act -> grouped conv: gathered
    assert [exported[index].reorder_output for index in (0, 3, 5)] == [False, True, False]
    with torch.no_grad():
        expected = exported(x)
        assert relative_error(expected, model(x)) < 0.05
        torch.testing.assert_close(torch.jit.script(exported)(x), expected)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.testing.assert_close(torch.jit.trace(exported, x)(x), expected)
        torch.compiler.reset()
        torch.testing.assert_close(torch.compile(exported, fullgraph=True, backend='eager')(x), expected)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')  # the TorchScript exporter needs no onnxscript
def test_exported_model_exports_to_onnx(tmp_path):
    onnx = pytest.importorskip('onnx')
    from onnx.reference import ReferenceEvaluator

    exported = export_learned_sizes(_exportable_model())
    x = torch.randn(1, 2, 8, 8)
    path = tmp_path / 'exported.onnx'
    torch.onnx.export(exported, (x,), str(path), dynamo=False, input_names=['image'])
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    convs = sum(isinstance(module, nn.Conv2d) for module in exported.modules())
    assert sum(node.op_type == 'Conv' for node in graph.graph.node) == convs > 3
    output = ReferenceEvaluator(graph).run(None, {'image': x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), exported(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('crop_tol', [0, 1, -0.1, 1.5, 'small'])
def test_bad_crop_tol_is_named(crop_tol):
    layer = AdaptiveConv2d(2, 4, 5, padding=2)
    for function in (export_learned_sizes, learned_kernel_sizes, timm_aconv.export_conv):
        with pytest.raises(ValueError, match=r'crop_tol must be a number in \(0, 1\)'):
            function(layer, crop_tol=crop_tol)


def test_bad_input_errors_name_the_argument():
    layer = AdaptiveConv2d(2, 4, 5, padding=2)
    for sizes in ((3, 4), (2,), (), 3, (0, 3)):
        with pytest.raises(ValueError, match='sizes must'):
            export_learned_sizes(copy.deepcopy(layer), sizes=sizes)
        with pytest.raises(ValueError, match='sizes must'):
            learned_kernel_sizes(layer, sizes=sizes)
    plain = nn.Sequential(nn.Conv2d(2, 4, 3))
    with pytest.raises(ValueError, match='model has no adaptive layer'):
        export_learned_sizes(plain)
    with pytest.raises(ValueError, match='model has no adaptive layer'):
        learned_kernel_sizes(plain)
    with pytest.raises(ValueError, match='strategy must be one of'):
        export_learned_sizes(copy.deepcopy(layer), strategy='fastest')


# ------------------------------------------------------------------------- plain architecture
def test_plain_cifar_resnet_from_learned_sizes():
    torch.manual_seed(0)
    adaptive = set_sigmas(
        timm.create_model('aconv_resnet8', widths=(8, 16, 16), num_classes=3), (0.03, 0.08, 0.08, 0.13)
    ).eval()
    learned = learned_kernel_sizes(adaptive)
    plain = timm_aconv.plain_model_from_learned(
        'conv_resnet8', learned, percentile=95, widths=(8, 16, 16), num_classes=3
    )
    convs = {name: module for name, module in plain.named_modules() if isinstance(module, nn.Conv2d)}
    assert not any(isinstance(module, AdaptiveConv2d) for module in plain.modules())
    assert set(convs) == set(learned)
    for name, row in learned.items():
        assert convs[name].kernel_size == (row.percentile(95),) * 2 == (5, 5)
    median = timm_aconv.plain_model_from_learned('conv_resnet8', learned, percentile=50, widths=(8, 16, 16))
    assert {module.kernel_size for module in median.modules() if isinstance(module, nn.Conv2d)} == {(3, 3)}
    x = torch.randn(2, 3, 16, 16)
    assert plain(x).shape == (2, 3) and plain.forward_features(x).shape == adaptive.forward_features(x).shape


def test_plain_timm_resnet_from_learned_sizes():
    torch.manual_seed(0)
    adaptive = set_sigmas(
        timm_aconv.convert_convs(timm.create_model('resnet10t', num_classes=3), sizes=[7], preserve=False),
        (0.03, 0.08, 0.13, 0.13),
    )
    learned = learned_kernel_sizes(adaptive)
    plain = timm_aconv.plain_model_from_learned('resnet10t', learned, num_classes=3)
    resized = {name: module for name, module in plain.named_modules() if name in learned}
    assert len(resized) == len(learned) == 11
    for name, module in resized.items():
        size = learned[name].percentile(95)
        assert type(module) is nn.Conv2d and module.kernel_size == (size, size) and module.padding == (size // 2,) * 2
    assert {module.kernel_size for module in resized.values()} == {(5, 5)}
    x = torch.randn(2, 3, 32, 32)
    assert [f.shape for f in plain.forward_intermediates(x, intermediates_only=True)] == [
        f.shape for f in timm.create_model('resnet10t').forward_intermediates(x, intermediates_only=True)
    ]
    with pytest.raises(ValueError, match=r"learned names layers that are not nn.Conv2d layers of ResNet: \['nope'\]"):
        timm_aconv.plain_model_from_learned('resnet10t', {'nope': 3})
    with pytest.raises(ValueError, match='must be an odd kernel size'):
        timm_aconv.plain_model_from_learned('resnet10t', {'conv1.0': 4})


def test_round_robin_latency_reports_medians_and_same_round_ratios(monkeypatch):
    import timm_aconv.utils.latency as latency_module

    class FakeClock:
        now = 0.0

        def __call__(self):
            return self.now

        def work(self, seconds):
            def run():
                self.now += seconds

            return run

    clock = FakeClock()
    monkeypatch.setitem(latency_module.CLOCKS, 'fake', clock)
    result = latency_module.round_robin_latency(
        {'reference': clock.work(0.02), 'slower': clock.work(0.03), 'faster': clock.work(0.01)}, rounds=4, clock='fake'
    )
    assert {name: (round(value.ms, 6), round(value.ratio, 6)) for name, value in result.items()} == {
        'reference': (20.0, 1.0),
        'slower': (30.0, 1.5),
        'faster': (10.0, 0.5),
    }
    assert result['slower'].calls_per_round == 1 and result['slower'].rounds == 4
    with pytest.raises(ValueError, match='clock must be one of'):
        latency_module.round_robin_latency({'a': clock.work(1)}, clock='sundial')
