"""segmentation-models-pytorch registrations: encoders, aconv_unet, the paper's U-Net

Mirrors the checks of SMP's ``tests/encoders/base.py`` (forward/backward, in_channels, depth,
dilation, compile, torch.export, torchscript) and ``tests/models/base.py`` (create_model, in
channels/depth/classes, classification head, any resolution, save/load with the hub mixin).
Pretrained weights cannot be downloaded here: 'imagenet' is tested by serving a local ordinary
ResNet checkpoint through SMP's own loading path.
"""

import json
import warnings

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

import timm_aconv
from timm_aconv import named_adaptive_layers
from timm_aconv.smp import AconvUnet, PaperUNet

ENCODERS = ['aconv_resnet18', 'aconv_resnet34', 'aconv_resnet50']


def _sample(channels: int = 3, size: int = 64, batch: int = 1) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(0))


def _strides(sample: torch.Tensor, features) -> list:
    return [sample.shape[-1] // feature.shape[-1] for feature in features]


def _adaptive_names(model: nn.Module) -> list:
    return [name for name, _ in named_adaptive_layers(model)]


@pytest.fixture
def local_imagenet(tmp_path, monkeypatch):
    """Serve a random ordinary ``resnet`` encoder checkpoint where SMP downloads ImageNet weights.

    Returns ``save(name) -> ordinary encoder``: the encoder whose state dict SMP will load.
    """
    served = {}

    def save(ordinary_name: str) -> nn.Module:
        torch.manual_seed(1)
        ordinary = smp.encoders.get_encoder(ordinary_name).eval()
        with torch.no_grad():  # non-trivial BN statistics, so a BN mix-up would show
            for module in ordinary.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
        save_file(ordinary.state_dict(), tmp_path / 'model.safetensors')
        (tmp_path / 'config.json').write_text(json.dumps({'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225]}))
        served[smp.encoders.encoders[ordinary_name]['pretrained_settings']['imagenet']['repo_id']] = tmp_path
        return ordinary

    def fake_download(repo_id, filename, revision=None):
        return str(served[repo_id] / filename)

    monkeypatch.setattr(smp.encoders, 'hf_hub_download', fake_download)
    return save


# ---------------------------------------------------------------- encoders (SMP encoders/base.py)


def test_encoders_registered_with_adaptive_spatial_convs_only():
    assert set(ENCODERS) <= set(smp.encoders.get_encoder_names())
    encoder = smp.encoders.get_encoder('aconv_resnet50')
    sizes = {name: layer.kernel_size for name, layer in named_adaptive_layers(encoder)}
    assert sizes['conv1'] == (7, 7) and sizes['layer1.0.conv2'] == (5, 5)
    assert all(size == (5, 5) for name, size in sizes.items() if name != 'conv1')
    pointwise = [name for name, module in encoder.named_modules() if type(module) is nn.Conv2d]
    assert 'layer1.0.conv1' in pointwise and 'layer1.0.downsample.0' in pointwise
    assert all(encoder.get_submodule(name).kernel_size == (1, 1) for name in pointwise)
    assert len(sizes) == 1 + 16  # stem + one 3×3 per bottleneck (3 + 4 + 6 + 3)


@pytest.mark.parametrize('in_channels', [1, 4])
def test_encoder_in_channels_patches_the_adaptive_stem(in_channels):
    encoder = smp.encoders.get_encoder('aconv_resnet18', in_channels=in_channels).eval()
    assert isinstance(encoder.conv1, timm_aconv.AdaptiveConv2d)
    assert encoder.conv1.weight.shape == (64, in_channels, 7, 7) and encoder.conv1.sigma.shape == (64,)
    with torch.inference_mode():
        features = encoder(_sample(in_channels))
    assert features[0].shape[1] == in_channels and encoder.out_channels[0] == in_channels


@pytest.mark.parametrize('depth', [3, 4, 5])
def test_encoder_depth(depth):
    encoder = smp.encoders.get_encoder('aconv_resnet18', depth=depth).eval()
    sample = _sample()
    with torch.inference_mode():
        features = encoder(sample)
    assert len(features) == len(encoder.out_channels) == depth + 1
    assert _strides(sample, features) == [1, 2, 4, 8, 16, 32][: depth + 1]
    assert encoder.output_stride == 2**depth


@pytest.mark.parametrize('output_stride', [8, 16])
def test_encoder_dilation_keeps_shapes(output_stride):
    encoder = smp.encoders.get_encoder('aconv_resnet18', output_stride=output_stride).eval()
    dilated = encoder.layer4[0].conv1
    assert dilated.kernel_size == (5, 5) and dilated.stride == (1, 1)
    assert dilated.padding == (2 * dilated.dilation[0],) * 2  # dilation * (n - 1) // 2 on the 5×5 grid
    sample = _sample()
    with torch.inference_mode():
        features = encoder(sample)
    assert _strides(sample, features) == [min(s, output_stride) for s in [1, 2, 4, 8, 16, 32]]


def test_invalid_encoder_depth():
    with pytest.raises(ValueError, match='depth should be in range'):
        smp.encoders.get_encoder('aconv_resnet18', depth=6)


# ---------------------------------------------------------------- pretrained 'imagenet' weights


@pytest.mark.parametrize('ordinary_name, in_channels, output_stride', [('resnet18', 1, 16), ('resnet50', 4, 8)])
def test_imagenet_weights_are_the_ordinary_resnet_converted(local_imagenet, ordinary_name, in_channels, output_stride):
    local_imagenet(ordinary_name)
    args = dict(in_channels=in_channels, weights='imagenet', output_stride=output_stride)
    ordinary = smp.encoders.get_encoder(ordinary_name, **args).eval()
    adaptive = smp.encoders.get_encoder(f'aconv_{ordinary_name}', **args).eval()
    assert adaptive.layer1[0].conv2.kernel_size == (5, 5)
    sample = _sample(in_channels)
    with torch.inference_mode():
        for adaptive_feature, ordinary_feature in zip(adaptive(sample), ordinary(sample)):  # float32 rounding only
            scale = ordinary_feature.abs().max()
            torch.testing.assert_close(adaptive_feature, ordinary_feature, rtol=1e-4, atol=1e-5 * scale)


def test_imagenet_weights_unknown_name_lists_the_available_ones():
    with pytest.raises(KeyError, match=r'Wrong pretrained weights `instagram` for encoder `aconv_resnet34`.*imagenet'):
        smp.encoders.get_encoder('aconv_resnet34', weights='instagram')


def test_ordinary_unet_checkpoint_loads_into_adaptive_unet():
    torch.manual_seed(0)
    ordinary = smp.Unet('resnet18', encoder_weights=None, classes=2).eval()
    adaptive = smp.Unet('aconv_resnet18', encoder_weights=None, classes=2).eval()
    adaptive.load_state_dict(ordinary.state_dict())
    sample = _sample()
    with torch.inference_mode():
        torch.testing.assert_close(adaptive(sample), ordinary(sample), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- encoders in SMP architectures


@pytest.mark.parametrize('arch', ['Unet', 'FPN'])
@pytest.mark.parametrize('encoder_name', ENCODERS)
def test_encoder_in_architecture_forward_backward(arch, encoder_name):
    model = getattr(smp, arch)(encoder_name, encoder_weights=None, classes=2)
    output = model(_sample())
    assert output.shape == (1, 2, 64, 64)
    output.mean().backward()
    stem = model.encoder.conv1
    assert stem.sigma.grad is not None and stem.sigma.grad.abs().sum() > 0


@pytest.mark.parametrize(
    'arch, kwargs',
    [
        ('deeplabv3plus', dict(encoder_output_stride=16, in_channels=1)),
        ('unetplusplus', dict(encoder_depth=3, decoder_channels=(64, 32, 16), in_channels=4)),
    ],
)
def test_encoder_in_other_architectures(arch, kwargs):
    model = smp.create_model(arch, encoder_name='aconv_resnet18', encoder_weights=None, classes=3, **kwargs).eval()
    with torch.inference_mode():
        output = model(_sample(kwargs['in_channels']))
    assert output.shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    'build',
    [
        lambda: smp.Unet('aconv_resnet35', encoder_weights=None),
        lambda: smp.create_model('aconv_unet', encoder_name='aconv_resnet35', encoder_weights=None),
    ],
)
def test_unknown_encoder_name_lists_ours(build):
    with pytest.raises(KeyError, match=r"Wrong encoder name `aconv_resnet35`, supported encoders: .*'aconv_resnet34'"):
        build()


def test_timm_universal_encoder():
    if not timm.is_model('aconv_resnet34'):
        pytest.skip("timm model 'aconv_resnet34' is not registered (timm_aconv.models does not provide it yet)")
    model = smp.Unet('tu-aconv_resnet34', encoder_weights=None, classes=2)
    assert any(isinstance(m, timm_aconv.AdaptiveConv2d) for m in model.encoder.modules())
    output = model(_sample())
    assert output.shape == (1, 2, 64, 64)
    output.mean().backward()


# ---------------------------------------------------------------- aconv_unet (SMP models/base.py)


def test_aconv_unet_default_is_one_adaptive_7x7_stem():
    model = smp.create_model('aconv_unet', encoder_name='resnet18', encoder_weights=None)
    assert isinstance(model, AconvUnet) and isinstance(model, smp.Unet)
    assert _adaptive_names(model) == ['encoder.conv1']
    stem = model.encoder.conv1
    assert stem.kernel_size == (7, 7) and stem.stride == (2, 2) and stem.padding == (3, 3)
    torch.testing.assert_close(stem.sigma, torch.linspace(0.1, 0.25, 64))
    assert stem.sigma_bounds == pytest.approx((1 / 7, 5))
    output = model(_sample())
    assert output.shape == (1, 1, 64, 64)  # SMP's default: one class
    output.mean().backward()
    assert stem.sigma.grad.abs().sum() > 0


def test_aconv_unet_layer_choices():
    encoder_wide = AconvUnet('resnet18', encoder_weights=None, adaptive='encoder', adaptive_kernel_size=5)
    names = _adaptive_names(encoder_wide)
    assert len(names) == 1 + 16 and all(name.startswith('encoder.') for name in names)
    assert {layer.kernel_size for _, layer in named_adaptive_layers(encoder_wide)} == {(5, 5)}

    patterned = AconvUnet(
        'resnet18', encoder_weights=None, adaptive=['encoder.layer1.*', 'segmentation_head.*'], adaptive_kernel_size=3
    )
    assert _adaptive_names(patterned) == [
        'encoder.layer1.0.conv1',
        'encoder.layer1.0.conv2',
        'encoder.layer1.1.conv1',
        'encoder.layer1.1.conv2',
        'segmentation_head.0',
    ]


def test_aconv_unet_bad_layer_choice():
    with pytest.raises(ValueError, match=r"adaptive must be one of \('first', 'encoder'\), None or a non-empty list"):
        AconvUnet('resnet18', encoder_weights=None, adaptive='decoder')
    with pytest.raises(ValueError, match='convert_convs selected no layer'):
        AconvUnet('resnet18', encoder_weights=None, adaptive=['encoder.nothing*'])


def test_aconv_unet_ordinary_baselines_resize_the_first_conv_and_reload(tmp_path):
    torch.manual_seed(0)
    unet = smp.Unet('resnet18', encoder_weights=None, classes=3)
    torch.manual_seed(0)
    conv7 = smp.create_model(
        'aconv_unet', encoder_name='resnet18', encoder_weights=None, classes=3, adaptive=None, first_conv_kernel_size=7
    )
    assert _adaptive_names(conv7) == [] and conv7.name == 'conv-u-resnet18'
    assert all(torch.equal(tensor, conv7.state_dict()[name]) for name, tensor in unet.state_dict().items())
    conv3 = smp.create_model(
        'aconv_unet', encoder_name='resnet18', encoder_weights=None, classes=3, adaptive=None, first_conv_kernel_size=3
    ).eval()
    stem = conv3.encoder.conv1
    assert type(stem) is nn.Conv2d and (stem.kernel_size, stem.stride, stem.padding) == ((3, 3), (2, 2), (1, 1))
    assert stem.bias is None and _adaptive_names(conv3) == []
    conv3.save_pretrained(tmp_path)
    restored = smp.from_pretrained(tmp_path).eval()
    assert type(restored) is AconvUnet and restored.encoder.conv1.kernel_size == (3, 3)
    sample = _sample(size=32)
    with torch.inference_mode():
        assert torch.equal(restored(sample), conv3(sample))
    with pytest.raises(ValueError, match=r'first_conv_kernel_size must be an odd positive integer .* got 4'):
        AconvUnet('resnet18', encoder_weights=None, adaptive=None, first_conv_kernel_size=4)
    with pytest.raises(ValueError, match=r'but encoder\.conv1 of encoder AconvResNetEncoder is adaptive'):
        AconvUnet('aconv_resnet18', encoder_weights=None, adaptive=None, first_conv_kernel_size=3)


def test_aconv_unet_in_channels_depth_classes_and_any_resolution():
    model = smp.create_model(
        'aconv_unet',
        encoder_name='resnet18',
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(64, 32, 16),
        in_channels=1,
        classes=7,
    ).eval()
    assert model.encoder.conv1.weight.shape == (64, 1, 7, 7)
    with torch.inference_mode():
        assert model(_sample(1)).shape == (1, 7, 64, 64)
        assert model(torch.rand(1, 1, 67, 71)).shape == (1, 7, 67, 71)


def test_aconv_unet_classification_head():
    model = smp.create_model(
        'aconv_unet',
        encoder_name='resnet18',
        encoder_weights=None,
        aux_params=dict(pooling='avg', classes=10, dropout=0.5, activation='sigmoid'),
    ).eval()
    with torch.inference_mode():
        masks, labels = model(_sample())
    assert masks.shape == (1, 1, 64, 64) and labels.shape == (1, 10)


def test_aconv_unet_pretrained_keeps_the_ordinary_unet_function(local_imagenet):
    local_imagenet('resnet18')
    torch.manual_seed(0)
    ordinary = smp.Unet('resnet18', encoder_weights='imagenet').eval()
    torch.manual_seed(0)
    adaptive = smp.create_model('aconv_unet', encoder_name='resnet18', encoder_weights='imagenet').eval()
    assert _adaptive_names(adaptive) == ['encoder.conv1']
    torch.testing.assert_close(adaptive.encoder.conv1.sigma, torch.full((64,), 0.5))  # preserving aperture
    sample = _sample()
    with torch.inference_mode():
        torch.testing.assert_close(adaptive(sample), ordinary(sample), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('encoder_name', ['resnet18', 'aconv_resnet18'])
def test_aconv_unet_save_load_round_trip(tmp_path, encoder_name):
    model = smp.create_model(
        'aconv_unet',
        encoder_name=encoder_name,
        encoder_weights=None,
        classes=2,
        adaptive=['encoder.conv1', 'encoder.layer1.0.*'],
        adaptive_kernel_size=9,
    ).eval()
    kernel_sizes = {name: layer.kernel_size for name, layer in named_adaptive_layers(model)}
    with torch.no_grad():  # trained-looking apertures, so a sigma that is not saved would show
        for _, layer in named_adaptive_layers(model):
            layer.sigma.uniform_(0.2, 0.9)
    model.save_pretrained(tmp_path, dataset='pets', metrics={'pixel_accuracy': 0.5})
    restored = smp.from_pretrained(tmp_path).eval()
    assert type(restored) is AconvUnet
    assert {name: layer.kernel_size for name, layer in named_adaptive_layers(restored)} == kernel_sizes
    assert 'pixel_accuracy' in (tmp_path / 'README.md').read_text()
    sample = _sample()
    with torch.inference_mode():
        assert torch.equal(restored(sample), model(sample))


def test_torchscript_export_and_compile_match_eager():
    """SMP's compile / torch.export / torchscript checks, for our encoder inside aconv_unet at once."""
    model = smp.create_model(
        'aconv_unet',
        encoder_name='aconv_resnet18',
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(64, 32, 16),
    ).eval()
    assert len(_adaptive_names(model)) == 1 + 16  # stem + two 3×3 per basic block (SMP keeps unused stages)
    sample = _sample()
    with torch.inference_mode():
        eager = model(sample)
    scripted = torch.jit.script(model)
    exported = torch.export.export(model, args=(sample,), strict=True).module()
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend='eager')
    with torch.inference_mode():
        torch.testing.assert_close(scripted(sample), eager, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(exported(sample), eager, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(compiled(sample), eager)


# ---------------------------------------------------------------- the paper's U-Net


def test_paper_unet_shape_one_adaptive_layer_backward():
    model = PaperUNet()
    assert _adaptive_names(model) == ['encoder.entry.0']
    entry = model.encoder.entry[0]
    assert entry.kernel_size == (7, 7) and entry.stride == (2, 2) and entry.out_channels == 32
    torch.testing.assert_close(entry.sigma, torch.linspace(0.1, 0.25, 32))
    assert entry.sigma_bounds == pytest.approx((1 / 7, 5))
    assert sum(p.numel() for p in model.parameters()) == 398531
    output = model(_sample(batch=2))
    assert output.shape == (2, 3, 64, 64)
    nn.functional.cross_entropy(output, torch.randint(0, 3, (2, 64, 64))).backward()
    assert entry.sigma.grad.abs().sum() > 0 and model.segmentation_head.weight.grad.abs().sum() > 0


def test_paper_unet_ordinary_baselines_and_keras_widths():
    conv3 = PaperUNet(adaptive=False, entry_kernel_size=3)
    assert _adaptive_names(conv3) == [] and conv3.encoder.entry[0].kernel_size == (3, 3)
    keras = PaperUNet(
        adaptive=False, entry_kernel_size=3, encoder_channels=(32, 64, 128, 256), decoder_channels=(256, 128, 64, 32)
    )
    assert sum(p.numel() for p in keras.parameters()) == 2055171  # the Keras example's network
    with pytest.raises(ValueError, match='must have the same length'):
        PaperUNet(decoder_channels=(96, 64, 48))


def test_paper_unet_by_name_through_smp(tmp_path):
    model = smp.create_model('aconv_paper_unet', encoder_weights=None, in_channels=1, classes=3).eval()
    assert isinstance(model, PaperUNet) and model.encoder.entry[0].in_channels == 1
    with pytest.raises(RuntimeError, match='divisible by 16'):
        model(torch.rand(1, 1, 40, 40))
    model.save_pretrained(tmp_path)
    restored = smp.from_pretrained(tmp_path).eval()
    sample = _sample(1)
    with torch.inference_mode():
        assert torch.equal(restored(sample), model(sample))


def test_paper_unet_by_name_rejects_encoder_choices():
    with pytest.raises(ValueError, match='pass encoder_weights=None'):
        smp.create_model('aconv_paper_unet')
    with pytest.raises(ValueError, match="do not pass encoder_name \\(got 'resnet50'\\)"):
        smp.create_model('aconv_paper_unet', encoder_name='resnet50', encoder_weights=None)


def test_a_converted_smp_model_reloads_in_one_line(tmp_path):
    """SMP's save_pretrained records the constructor, not the conversion: timm_aconv.smp.from_pretrained
    rebuilds the plain model, converts what the checkpoint holds as adaptive, loads strictly."""
    torch.manual_seed(0)
    model = smp.Unet('resnet18', encoder_weights=None, encoder_depth=3, decoder_channels=(16, 8, 4), classes=2)
    timm_aconv.convert_convs(model, sizes=[7], include=['encoder.conv1'])
    timm_aconv.convert_convs(model, sizes=[5], include=['encoder.layer1.0.conv*'], preserve=False)
    with torch.no_grad():
        for layer in timm_aconv.adaptive_layers(model):
            layer.sigma.uniform_(0.2, 0.9)  # as after training
    model.save_pretrained(str(tmp_path))
    with pytest.raises(RuntimeError, match='sigma'), pytest.warns(UserWarning, match='Mismatched keys'):
        smp.from_pretrained(str(tmp_path))  # the plain Unet has no sigma to load
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # and no "you should TRAIN the model" warning about the converted layers
        restored = timm_aconv.smp.from_pretrained(str(tmp_path))
    assert {name: layer.kernel_size for name, layer in timm_aconv.named_adaptive_layers(restored)} == {
        'encoder.conv1': (7, 7),
        'encoder.layer1.0.conv1': (5, 5),
        'encoder.layer1.0.conv2': (5, 5),
    }
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model.eval()(x))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r'no model\.safetensors in'):
        timm_aconv.smp.from_pretrained(str(tmp_path / 'empty'))


def test_aconv_unet_with_elliptic_envelopes_trains_and_round_trips(tmp_path):
    model = smp.create_model(
        'aconv_unet', encoder_name='resnet18', encoder_weights=None, classes=2, covariance_type='full'
    )
    (stem,) = [layer for _, layer in named_adaptive_layers(model)]
    assert stem.covariance_type == 'full' and stem.theta.shape == (64,)
    model(_sample()).square().mean().backward()
    assert stem.theta.grad is not None and stem.sigma.grad.shape == (64, 2)
    model.eval()
    with torch.no_grad():
        stem.theta.uniform_(-1, 1)
        stem.sigma.uniform_(0.1, 0.6)
    model.save_pretrained(tmp_path)
    restored = smp.from_pretrained(tmp_path).eval()
    sample = _sample()
    with torch.inference_mode():
        assert torch.equal(restored(sample), model(sample))


def test_paper_unet_takes_covariance_type_for_its_entry_conv():
    model = PaperUNet(covariance_type='full')
    entry = model.encoder.entry[0]
    assert entry.covariance_type == 'full' and entry.sigma.shape == (32, 2)
    assert entry.sigma_bounds == ((1 / 7, 5.0), (1 / 7, 5.0))  # the authors' bounds, per axis
    nn.functional.cross_entropy(model(_sample(batch=2)), torch.randint(0, 3, (2, 64, 64))).backward()
    assert entry.theta.grad is not None and entry.sigma.grad.abs().sum() > 0
