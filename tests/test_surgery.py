"""convert_convs / fuse_convs / summary through the public API, the way users call them."""

import warnings

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn

import timm_aconv
from timm_aconv import AdaptiveConv2d, convert_convs, fuse_convs


class TwoPaths(nn.Module):
    """A small model with a stem, a shared conv (two names), a pointwise and a dilated conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.alias = self.shared
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.dilated = nn.Conv2d(8, 8, 3, padding=2, dilation=2, stride=2)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.alias(self.shared(x)))
        x = self.dilated(self.pointwise(x))
        return self.head(x.mean((2, 3)))


def _twopaths():
    torch.manual_seed(0)
    return TwoPaths().eval()


def _adaptive_names(model):
    return [name for name, module in model.named_modules() if isinstance(module, AdaptiveConv2d)]


def test_preserve_keeps_timm_resnet18_outputs():
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        convert_convs(model, sizes=[7])
        after = model(x)
    assert len(_adaptive_names(model)) == 17  # stem + 16 block convs; the 1x1 downsamples stay
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_preserve_keeps_smp_unet_outputs_first_conv_only():
    torch.manual_seed(0)
    model = smp.Unet('resnet18', encoder_weights=None, classes=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        convert_convs(model, sizes=[9], include=['encoder.conv1'])
        after = model(x)
    assert _adaptive_names(model) == ['encoder.conv1']
    assert model.encoder.conv1.kernel_size == (9, 9) and model.encoder.conv1.padding == (4, 4)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    'conv_kwargs,size',
    [
        (dict(kernel_size=3, padding=1), 5),
        (dict(kernel_size=3, padding=2, dilation=2, stride=2), 7),
        (dict(kernel_size=3, padding='same', dilation=(1, 2)), 9),
        (dict(kernel_size=5, padding='valid'), 7),
        (dict(kernel_size=(1, 3), padding=(0, 1)), 5),
        (dict(kernel_size=3, padding=1, groups=4, padding_mode='reflect'), 5),
        (dict(kernel_size=7, padding=3, stride=2, bias=False), 7),
    ],
)
def test_preserve_single_layer_exact(conv_kwargs, size):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, dtype=torch.float64, **conv_kwargs)
    x = torch.randn(2, 4, 15, 14, dtype=torch.float64)
    expected = conv(x)
    layer = convert_convs(conv, sizes=size)
    assert isinstance(layer, AdaptiveConv2d) and layer.kernel_size == (size, size)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_selection_include_exclude_filter_fn_and_pointwise():
    model = convert_convs(_twopaths(), sizes=5, include=['stem'])
    assert _adaptive_names(model) == ['stem']
    model = convert_convs(_twopaths(), sizes=5, exclude=['dilated', 'st*'])
    assert _adaptive_names(model) == ['shared']
    model = convert_convs(_twopaths(), sizes=5, filter_fn=lambda name, conv: conv.stride == (2, 2))
    assert _adaptive_names(model) == ['dilated']
    model = convert_convs(_twopaths(), sizes=3, include=['pointwise'], skip_pointwise=False)
    assert _adaptive_names(model) == ['pointwise'] and model.pointwise.kernel_size == (3, 3)
    with pytest.raises(ValueError, match=r"layer 'pointwise' has a 1x1 kernel, which sizes=None would keep"):
        convert_convs(_twopaths(), sizes=None, include=['pointwise'], skip_pointwise=False)
    model = convert_convs(_twopaths(), sizes=5)
    assert _adaptive_names(model) == ['stem', 'shared', 'dilated']
    assert type(model.pointwise) is nn.Conv2d


def test_per_layer_sizes_and_none_keeps_size():
    model = convert_convs(_twopaths(), sizes=[5, 7, 9])
    assert [model.get_submodule(n).kernel_size[0] for n in ('stem', 'shared', 'dilated')] == [5, 7, 9]
    model = convert_convs(_twopaths(), sizes=None)
    assert {model.get_submodule(n).kernel_size[0] for n in ('stem', 'shared', 'dilated')} == {3}


def test_shared_module_replaced_under_every_name():
    model = _twopaths()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
        convert_convs(model, sizes=5, include=['alias'])
        after = model(x)
    assert isinstance(model.shared, AdaptiveConv2d) and model.shared is model.alias
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_second_call_is_a_no_op():
    model = convert_convs(_twopaths(), sizes=5)
    layers = dict(model.named_modules())
    assert convert_convs(model, sizes=5) is model
    assert dict(model.named_modules()) == layers


def test_keeps_dtype_requires_grad_and_mode():
    model = _twopaths().double().train()
    model.stem.requires_grad_(False)
    convert_convs(model, sizes=5)
    assert model.stem.weight.dtype == model.stem.sigma.dtype == torch.float64
    assert not model.stem.weight.requires_grad and not model.stem.sigma.requires_grad
    assert model.shared.weight.requires_grad and model.shared.sigma.requires_grad
    assert model.stem.training
    assert not convert_convs(_twopaths(), sizes=5).stem.training


def test_meta_device_conversion():
    with torch.device('meta'):
        model = TwoPaths()
    convert_convs(model, sizes=5)
    assert model.stem.sigma.is_meta and model.stem.weight.is_meta


def test_preserve_false_initializes_fresh_layers():
    model = convert_convs(_twopaths(), sizes=5, preserve=False, include=['stem'])
    torch.testing.assert_close(model.stem.sigma.detach(), torch.linspace(0.1, 0.5, 8))
    assert model.stem.weight[:, :, 0].abs().sum() > 0  # border of the grid is not zero
    preserved = convert_convs(_twopaths(), sizes=5, include=['stem'])
    assert preserved.stem.weight[:, :, 0].abs().sum() == 0
    torch.testing.assert_close(preserved.stem.sigma.detach(), torch.full((8,), 0.5))


def test_error_messages():
    with pytest.raises(ValueError, match=r'selected no layer.*stem \(3x3\).*shared \(3x3\).*pointwise \(1x1\)'):
        convert_convs(_twopaths(), include=['encoder.*'])
    with pytest.raises(ValueError, match=r"sizes has 2 values but 3 layers.*\['stem', 'shared', 'dilated'\]"):
        convert_convs(_twopaths(), sizes=[5, 7])
    with pytest.raises(ValueError, match=r'sizes must be an odd integer >= 3.*got 4'):
        convert_convs(_twopaths(), sizes=4)
    with pytest.raises(ValueError, match=r"layer 'conv1' has a 7x7 kernel; preserve=True needs sizes >= 7, got 5"):
        convert_convs(timm.create_model('resnet18'), sizes=5, include=['conv1'])
    even = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2))
    with pytest.raises(ValueError, match=r"layer '0' has a 2-wide kernel.*exclude=\['0'\]"):
        convert_convs(even, sizes=5)
    with pytest.raises(TypeError, match='include must be a list of fnmatch patterns'):
        convert_convs(_twopaths(), include=[3])


def test_shrinking_without_preserve_keeps_output_shape():
    model = timm.create_model('resnet18', num_classes=3)
    convert_convs(model, sizes=5, include=['conv1'], preserve=False)
    assert model.conv1.kernel_size == (5, 5) and model.conv1.padding == (2, 2)
    assert model.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_fuse_convs_identical_outputs_and_plain_types():
    model = convert_convs(_twopaths(), sizes=7, preserve=False)
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
        fused = fuse_convs(model)
        after = fused(x)
    assert fused is model and not _adaptive_names(fused)
    assert type(fused.shared) is nn.Conv2d and fused.shared is fused.alias
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_fuse_with_crop_tol_bounds_the_error():
    torch.manual_seed(0)
    layer = AdaptiveConv2d(16, 32, 9, padding=4, sigma_init=(0.05, 0.12)).eval()
    x = torch.randn(4, 16, 24, 24)
    with torch.no_grad():
        full = layer(x)
        for crop_tol in (1e-2, 1e-3):
            cropped = fuse_convs(layer, crop_tol=crop_tol)
            kernel_error = 1 - cropped.weight.square().sum() / layer.product_kernel().square().sum()
            assert cropped.kernel_size[0] < 9 and cropped.padding[0] == (cropped.kernel_size[0] - 1) // 2
            assert 0 <= float(kernel_error) <= crop_tol
            out = cropped(x)
            assert out.shape == full.shape
            assert float((out - full).norm() / full.norm()) <= 2 * crop_tol**0.5
        # no crop at all with zero tolerance and wide envelopes
        assert fuse_convs(AdaptiveConv2d(4, 4, 7, padding=3, sigma_init=2.0), crop_tol=0.0).kernel_size == (7, 7)
    with pytest.raises(ValueError, match=r'crop_tol must be None or in \[0, 1\)'):
        fuse_convs(layer, crop_tol=1.5)


def test_crop_never_changes_output_shape_of_unpadded_layers():
    layer = AdaptiveConv2d(4, 4, 7, padding=1, sigma_init=0.05)
    cropped = fuse_convs(layer, crop_tol=0.1)
    assert cropped.kernel_size == (5, 5) and cropped.padding == (0, 0)
    x = torch.randn(1, 4, 10, 10)
    assert cropped(x).shape == layer(x).shape


def test_summary_table():
    model = convert_convs(_twopaths(), sizes=[5, 7, 9], preserve=False, sigma_init=(0.05, 1.0))
    table = timm_aconv.summary(model)
    assert [row.name for row in table] == ['stem', 'shared', 'dilated']
    stem = table[0]
    assert (stem.grid_size, stem.filters) == (5, 8)
    assert (stem.sigma_min, stem.sigma_max) == (pytest.approx(0.05), pytest.approx(1.0))
    assert stem.size_min <= stem.size_median <= stem.size_max == 5
    assert table[2].size_min < table[2].size_max
    text = str(table)
    assert text.splitlines()[0].split()[:3] == ['layer', 'n', 'filters'] and 'dilated' in text
    assert not timm_aconv.summary(_twopaths())


def test_fuse_convs_on_a_model_without_adaptive_layers_warns_or_raises_when_strict():
    model = fuse_convs(nn.Sequential(AdaptiveConv2d(2, 3, 3, padding=1)))
    with pytest.warns(UserWarning, match='fuse_convs: Sequential has no adaptive layer to fuse'):
        assert fuse_convs(model) is model
    with pytest.raises(ValueError, match=r'has no adaptive layer to fuse \(fused already, or never converted\)'):
        fuse_convs(model, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        fuse_convs(nn.Sequential(AdaptiveConv2d(2, 3, 3, padding=1)), strict=True)  # something to fuse: silent
