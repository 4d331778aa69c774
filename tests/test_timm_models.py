"""timm registrations: the model contract of timm's own tests/test_models.py, the CONV/ACONV twins,
the pretrained conversion of timm's ResNet weights, and clear errors."""

import copy
import functools
import json
import math

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file
from timm.models import get_notrace_functions, get_notrace_modules  # (what timm 1.0.16 exports too)
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import timm_aconv
from timm_aconv import AdaptiveConv2d
from timm_aconv.models import ChannelRepeatShortcut, CifarResNet

CIFAR_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
CIFAR_MODELS = [f'{prefix}_resnet{depth}' for prefix in ('aconv', 'conv') for depth in CIFAR_DEPTHS]
IMAGENET_MODELS = ['aconv_resnet18', 'aconv_resnet34', 'aconv_resnet50', 'aconv_resnet101', 'aconv_resnet152']
SIMPLE_MODELS = ['aconv_simple_cnn', 'conv_simple_cnn']
ALL_MODELS = CIFAR_MODELS + IMAGENET_MODELS + SIMPLE_MODELS
# the timm conformance checks run on one model per class and block type (creating the big
# ImageNet ResNets on CPU costs seconds each; every name is built on the meta device below)
CONTRACT_MODELS = ['aconv_resnet20', 'conv_resnet20', 'aconv_resnet18', 'aconv_resnet50']
SMALL_INPUT = {'aconv_resnet18': (3, 64, 64), 'aconv_resnet50': (3, 64, 64)}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope='module')
def _one_thread_and_model_cache():
    # small-batch CPU tests: intra-op threads cost more in synchronisation than they save,
    # many times over on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _pristine.cache_clear()  # release the cached models (~300 MB) for the rest of the session


def _input(model_name: str, model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    return torch.randn(batch_size, *SMALL_INPUT.get(model_name, model.pretrained_cfg['input_size']))


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- registry ---------------------------------------------------------------------------------


def test_every_model_is_listed_in_its_own_module():
    assert set(timm.list_models('aconv_*')) == {*(n for n in ALL_MODELS if n.startswith('aconv_')), 'aconv_converted'}
    assert timm.list_models(module='converted') == ['aconv_converted']
    assert set(timm.list_models('conv_*')) == {n for n in ALL_MODELS if n.startswith('conv_')}
    assert set(timm.list_models(module='cifar_resnet')) == set(CIFAR_MODELS)
    assert set(timm.list_models(module='adaptive_resnet')) == set(IMAGENET_MODELS)
    assert set(timm.list_models(module='simple_cnn')) == set(SIMPLE_MODELS)
    assert not set(timm.list_models(module='resnet')) & set(ALL_MODELS)


@pytest.mark.parametrize('model_name', ALL_MODELS)
def test_every_model_builds_on_meta_device(model_name):
    # SMP builds timm encoders inside `with torch.device('meta')`
    with torch.device('meta'):
        model = timm.create_model(model_name)
    assert all(p.is_meta for p in model.parameters())
    adaptive = [m for m in model.modules() if isinstance(m, AdaptiveConv2d)]
    assert bool(adaptive) == model_name.startswith('aconv_')


# ---- CIFAR ResNets --------------------------------------------------------------------------


def _cifar_param_count(depth: int, k: int, adaptive: bool, in_chans: int = 3, num_classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet counted by hand: convs, BN affine, linear head (+ one sigma per filter)."""
    n, widths = (depth - 2) // 6, (16, 32, 64)
    convs = [(in_chans, 16)]
    in_chs = 16
    for width in widths:
        convs += [(in_chs, width)] + [(width, width)] * (2 * n - 1)
        in_chs = width
    weights = sum(cin * cout * k * k for cin, cout in convs)
    filters = sum(cout for _, cout in convs)
    return weights + 2 * filters + 64 * num_classes + num_classes + (filters if adaptive else 0)


@pytest.mark.parametrize('depth,k', [(20, 3), (20, 7), (56, 5)])
def test_cifar_twins_have_the_same_architecture(depth, k):
    aconv = timm.create_model(f'aconv_resnet{depth}', kernel_size=k)
    conv = timm.create_model(f'conv_resnet{depth}', kernel_size=k)
    aconv_shapes = {name: p.shape for name, p in aconv.named_parameters() if not name.endswith('.sigma')}
    assert aconv_shapes == {name: p.shape for name, p in conv.named_parameters()}
    adaptive = [m for m in aconv.modules() if isinstance(m, AdaptiveConv2d)]
    ordinary = [m for m in conv.modules() if type(m) is nn.Conv2d]
    assert len(adaptive) == len(ordinary) == depth - 1  # stem + 2 per block; the last layer is the linear head
    assert all(m.kernel_size == (k, k) and m.padding == (k // 2, k // 2) and m.bias is None for m in adaptive)
    assert _param_count(conv) == _cifar_param_count(depth, k, adaptive=False)
    assert _param_count(aconv) == _cifar_param_count(depth, k, adaptive=True)


def test_cifar_parameter_counts_match_the_papers():
    # He et al.: ResNet-20 has 0.27M parameters (3×3)
    assert _param_count(timm.create_model('conv_resnet20', kernel_size=3)) == 269_722
    assert _param_count(timm.create_model('aconv_resnet20', kernel_size=3)) == 270_410
    # the adaptive paper's Table 1: CIFAR-10 ResNet-20 ≈1.4M, Fashion 2 blocks ≈0.9M, MNIST 1 block ≈75K
    assert _param_count(timm.create_model('aconv_resnet20')) == 1_460_170  # default kernel_size=7
    assert _param_count(timm.create_model('aconv_resnet14', in_chans=1)) == 931_082
    assert _param_count(timm.create_model('aconv_resnet8', in_chans=1, kernel_size=3)) == 75_242


@pytest.mark.parametrize('k', [3, 5, 7, 9])
def test_cifar_kernel_sizes_and_sigma_init(k):
    model = timm.create_model('aconv_resnet20', kernel_size=k)
    layers = [m for m in model.modules() if isinstance(m, AdaptiveConv2d)]
    assert {m.kernel_size for m in layers} == {(k, k)}
    assert all(torch.all(m.sigma == 0.15) for m in layers)  # the authors' code's init
    assert all(m.sigma_bounds == (1 / k, k) for m in layers)
    ranged = timm.create_model('aconv_resnet20', kernel_size=k, sigma_init=(0.1, 0.3))
    assert torch.allclose(ranged.conv1.sigma, torch.linspace(0.1, 0.3, 16))


@pytest.mark.parametrize('model_name', CIFAR_MODELS)
def test_cifar_forward_backward(model_name):
    model = timm.create_model(model_name, num_classes=42, in_chans=1).train()
    outputs = model(torch.randn(2, 1, 8, 8))  # any size works; small keeps ResNet-110 with 7×7 kernels fast
    assert outputs.shape == (2, 42)
    outputs.mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing}'
    assert not torch.isnan(outputs).any()


def test_type_a_shortcut_subsamples_and_repeats_channels():
    x = torch.randn(2, 16, 7, 7)
    shortcut = ChannelRepeatShortcut(16, 32, stride=2)
    expected = torch.cat([x[:, :, ::2, ::2], x[:, :, ::2, ::2]], dim=1)
    assert torch.equal(shortcut(x), expected)
    model = timm.create_model('aconv_resnet20')
    assert sum(isinstance(m, ChannelRepeatShortcut) for m in model.modules()) == 2
    assert not any(type(m) is nn.Conv2d for m in model.modules())  # parameter free


def test_type_b_shortcut_adds_1x1_projections():
    model = timm.create_model('conv_resnet20', kernel_size=3, shortcut='B')
    projections = [m for m in model.modules() if type(m) is nn.Conv2d and m.kernel_size == (1, 1)]
    assert [(m.in_channels, m.out_channels, m.stride) for m in projections] == [(16, 32, (2, 2)), (32, 64, (2, 2))]
    assert _param_count(model) == 269_722 + 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_drop_rate_follows_each_stage_and_the_pooling():
    plain = timm.create_model('aconv_resnet20').eval()
    dropped = timm.create_model('aconv_resnet20', drop_rate=0.25)
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.25] * 3
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dropped.eval()(x), plain(x))
        assert not torch.equal(
            dropped.train().forward_head(plain.forward_features(x), pre_logits=True),
            plain.forward_head(plain.forward_features(x), pre_logits=True),
        )


# ---- the timm model contract (mirrors timm's tests/test_models.py) ------------------------


def test_cifar_pretrained_cfg():
    cfg = timm.create_model('aconv_resnet20').pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['num_classes'] == 10
    assert cfg['mean'] == (0.4914, 0.4822, 0.4465) and cfg['std'] == (0.2470, 0.2435, 0.2616)
    assert cfg['first_conv'] == 'conv1' and cfg['classifier'] == 'fc'
    assert timm.get_pretrained_cfg('conv_resnet110').to_dict()['pool_size'] == (8, 8)


@functools.cache
def _pristine(model_name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(model_name).eval()


def _model(model_name: str) -> nn.Module:
    """A fresh copy of the default model (the ImageNet ResNets take seconds to build on CPU)."""
    return copy.deepcopy(_pristine(model_name))


@pytest.mark.parametrize('model_name', CONTRACT_MODELS)
def test_default_cfg_heads_and_classifier_reset(model_name):
    model = _model(model_name)
    cfg, state_dict = model.pretrained_cfg, model.state_dict()
    x = _input(model_name, model)
    stride = cfg['input_size'][-1] // cfg['pool_size'][-1]
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[1:] == (model.num_features, x.shape[-2] // stride, x.shape[-1] // stride)
        assert pre_logits.shape == (1, model.head_hidden_size)
        assert model.forward_head(features).shape == (1, cfg['num_classes'])
        model.reset_classifier(0)
        assert torch.equal(model(x), pre_logits)
        model.reset_classifier(0, '')
        assert model(x).shape == features.shape
        model.reset_classifier(7, 'avg')
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7
    assert f'{cfg["classifier"]}.weight' in state_dict and f'{cfg["first_conv"]}.weight' in state_dict


@pytest.mark.parametrize('model_name', ['aconv_resnet20', 'conv_resnet20'])
def test_cifar_heads_at_the_cfg_input_size(model_name):
    # timm's test runs at the cfg's input size and compares with pool_size; also num_classes=0, global_pool=''
    model = timm.create_model(model_name, num_classes=0, global_pool='').eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        assert model(torch.randn(1, *cfg['input_size'])).shape == (1, model.num_features, *cfg['pool_size'])


@pytest.mark.parametrize('model_name', CONTRACT_MODELS)
def test_forward_backward_at_small_batch(model_name):
    model = _model(model_name).train()
    model.reset_classifier(42)
    outputs = model(_input(model_name, model, batch_size=2))
    outputs.mean().backward()
    assert outputs.shape == (2, 42) and not torch.isnan(outputs).any()
    assert sum(p.grad.numel() for p in model.parameters() if p.grad is not None) == _param_count(model)


FEATURES = {  # channels and reductions of the default features_only levels
    'aconv_resnet20': ([16, 16, 32, 64], [1, 1, 2, 4]),
    'conv_resnet20': ([16, 16, 32, 64], [1, 1, 2, 4]),
    'aconv_resnet18': ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32]),
    'aconv_resnet50': ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32]),
}


@pytest.mark.parametrize('model_name', CONTRACT_MODELS)
def test_features_only_and_forward_intermediates(model_name):
    channels, reductions = FEATURES[model_name]
    torch.manual_seed(0)
    features = timm.create_model(model_name, features_only=True).eval()  # the same weights as _pristine
    assert features.feature_info.channels() == channels and features.feature_info.reduction() == reductions
    model = _model(model_name)
    x = _input(model_name, model)
    size = x.shape[-1]
    with torch.no_grad():
        maps = features(x)
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True, stop_early=True)
    assert [m.shape for m in maps] == [
        (1, c, math.ceil(size / r), math.ceil(size / r)) for c, r in zip(channels, reductions)
    ]
    assert all(torch.equal(a, b) for a, b in zip(maps, intermediates))
    assert all(torch.equal(a, b) for a, b in zip(last_two, intermediates[-2:]))


def test_prune_intermediate_layers_keeps_the_features_up_to_the_last_index():
    model = _model('aconv_resnet20')
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, intermediates = model.forward_intermediates(x)
        assert model.prune_intermediate_layers(indices=[1, 2]) == [1, 2]
        assert len(model.stages) == 2 and model.num_features == 32
        assert torch.equal(model.forward_features(x), intermediates[2])
        assert torch.equal(model(x), intermediates[2])  # head pruned: no pooling, no classifier


def test_simple_cnn_features_only():
    features = timm.create_model('aconv_simple_cnn', features_only=True, img_size=32).eval()
    assert features.feature_info.channels() == [32, 32, 32] and features.feature_info.reduction() == [1, 1, 2]
    with torch.no_grad():
        assert [m.shape[-1] for m in features(torch.randn(1, 1, 32, 32))] == [32, 32, 16]


@pytest.mark.parametrize('model_name', ['aconv_resnet20', 'conv_resnet20', 'aconv_resnet18', 'aconv_simple_cnn'])
def test_torchscript(model_name):
    with timm.set_scriptable(True):
        model = timm.create_model(model_name).eval()
    scripted = torch.jit.script(model)
    x = _input(model_name, model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def _fx_model(model: nn.Module) -> nn.Module:
    # as timm's test: trace with timm's leaf modules, return the last node
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs
    )


@pytest.mark.parametrize('model_name', ['aconv_resnet20', 'aconv_resnet18', 'aconv_simple_cnn'])
def test_fx_trace_matches_eager(model_name):
    assert AdaptiveConv2d in get_notrace_modules()
    model = _model(model_name)
    x = _input(model_name, model)
    with torch.no_grad():
        outputs = model(x)
        fx_outputs = next(iter(_fx_model(model)(x).values()))
    assert torch.equal(fx_outputs, outputs)


@pytest.mark.parametrize('model_name', ['aconv_resnet20', 'aconv_resnet18'])
def test_grad_checkpointing_gives_the_same_outputs_and_gradients(model_name):
    model = _model(model_name)
    x = _input(model_name, model, batch_size=2)
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        outputs = model(x)
        outputs.sum().backward()
        results.append((outputs.detach(), model.conv1.sigma.grad.clone()))
        assert model.grad_checkpointing is enable
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


# ---- the paper's simple CNN ---------------------------------------------------------------


def _simple_cnn_param_count(k: int, size: int, in_chans: int = 1, num_classes: int = 10, adaptive: bool = True):
    convs = in_chans * 32 * k * k + 32 * 32 * k * k + 2 * 2 * 32 + (2 * 32 if adaptive else 0)
    dense = 32 * (size // 2) ** 2 * 256 + 256 + 2 * 256
    return convs + dense + 256 * num_classes + num_classes


@pytest.mark.parametrize('model_name', SIMPLE_MODELS)
@pytest.mark.parametrize('size,in_chans,k', [(28, 1, 7), (8, 1, 3), (32, 3, 5), (60, 1, 9)])
def test_simple_cnn_input_sizes_and_parameter_counts(model_name, size, in_chans, k):
    model = timm.create_model(model_name, img_size=size, in_chans=in_chans, kernel_size=k).train()
    adaptive = model_name.startswith('aconv')
    assert _param_count(model) == _simple_cnn_param_count(k, size, in_chans, adaptive=adaptive)
    outputs = model(torch.randn(2, in_chans, size, size))
    outputs.sum().backward()
    assert outputs.shape == (2, 10)
    assert all(p.grad is not None for p in model.parameters())


def test_simple_cnn_defaults_and_head():
    model = timm.create_model('aconv_simple_cnn').eval()
    assert _param_count(model) == 1_660_906  # the paper's Table 1: 1.6M for MNIST with 7×7 kernels
    assert model.pretrained_cfg['input_size'] == (1, 28, 28)
    assert torch.allclose(model.conv2.sigma, torch.linspace(0.1, 0.5, 32))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (3, model.num_features, 14, 14)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (3, model.head_hidden_size)
        model.reset_classifier(0)
        assert torch.equal(model(x), pre_logits)
        model.reset_classifier(0, '')  # the dense layer is the pooling: without it, the feature map
        assert torch.equal(model(x), features)
        with pytest.raises(ValueError, match="global_pool='' keeps the unpooled feature map"):
            model.reset_classifier(5, '')
        with pytest.raises(ValueError, match='global_pool must be one of'):
            model.reset_classifier(5, 'avg')
        model.reset_classifier(5, 'flatten')
        assert model(x).shape == (3, 5)
    unpooled = timm.create_model('aconv_simple_cnn', num_classes=0, global_pool='').eval()
    with torch.no_grad():
        assert unpooled(x).shape == features.shape


def test_simple_cnn_forward_intermediates_match_features_only():
    torch.manual_seed(0)
    features = timm.create_model('aconv_simple_cnn', features_only=True).eval()
    torch.manual_seed(0)
    model = timm.create_model('aconv_simple_cnn').eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert all(torch.equal(a, b) for a, b in zip(features(x), intermediates, strict=True))
        first = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    assert len(first) == 1 and torch.equal(first[0], intermediates[0])


@pytest.mark.parametrize('model_name', ['aconv_resnet20', 'aconv_simple_cnn'])
def test_fx_features_only_scripts(model_name):
    # timm's test_model_forward_torchscript_with_features_fx: a caller's feature_cfg joins the defaults
    with timm.set_scriptable(True):
        model = timm.create_model(model_name, features_only=True, feature_cfg={'feature_cls': 'fx'}).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, *model.pretrained_cfg['input_size'])
    with torch.inference_mode():
        outputs, expected = scripted(x), model(x)
    assert [o.shape[1] for o in outputs] == model.feature_info.channels()
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(outputs, expected, strict=True))


# ---- adaptive ImageNet ResNets ------------------------------------------------------------


def test_imagenet_resnet_layers_and_kwargs():
    with torch.device('meta'):
        model = timm.create_model('aconv_resnet34')
        custom = timm.create_model('aconv_resnet34', kernel_size=7, stem_kernel_size=9)
        dilated = timm.create_model('aconv_resnet34', output_stride=8)  # as SMP's DeepLab encoders
    assert model.conv1.kernel_size == (7, 7) and model.conv1.padding == (3, 3)
    blocks = [m for name, m in model.named_modules() if isinstance(m, AdaptiveConv2d) and name != 'conv1']
    assert len(blocks) == 32 and {(m.kernel_size, m.padding) for m in blocks} == {((5, 5), (2, 2))}
    assert all(type(m.downsample[0]) is nn.Conv2d for m in model.modules() if getattr(m, 'downsample', None))
    assert custom.conv1.kernel_size == (9, 9) and custom.layer4[2].conv2.kernel_size == (7, 7)
    # a dilated 5×5 grid keeps the output size: padding = dilation * 2
    assert (dilated.layer4[2].conv2.dilation, dilated.layer4[2].conv2.padding) == ((4, 4), (8, 8))


def test_imagenet_pretrained_cfgs_point_at_timms_weights():
    for arch in ('resnet18', 'resnet34', 'resnet50'):
        ours, theirs = timm.get_pretrained_cfg(f'aconv_{arch}'), timm.get_pretrained_cfg(arch)
        assert (ours.hf_hub_id, ours.url, ours.input_size, ours.mean) == (
            theirs.hf_hub_id,
            theirs.url,
            theirs.input_size,
            theirs.mean,
        )
        assert timm.list_pretrained(f'aconv_{arch}.*') == [f'aconv_{n}' for n in timm.list_pretrained(f'{arch}.*')]
    assert timm.get_pretrained_cfg('aconv_resnet34').hf_hub_id == 'timm/resnet34.a1_in1k'


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    """A randomly initialised timm resnet18 (with non-trivial BN statistics), saved as timm would load it."""
    torch.manual_seed(1)
    model = timm.create_model('resnet18').eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(module.weight, 0.5, 1.5)
    path = tmp_path_factory.mktemp('weights') / 'resnet18.safetensors'
    save_file(model.state_dict(), str(path))
    return model, str(path)


def test_pretrained_loads_timm_weights_with_the_same_logits(resnet18_file):
    reference, path = resnet18_file
    model = timm.create_model('aconv_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    assert isinstance(model.conv1, AdaptiveConv2d) and model.layer1[0].conv1.kernel_size == (5, 5)
    assert torch.all(model.layer1[0].conv1.sigma == 0.5)  # the preserving conversion's wide envelope
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, expected = model(x), reference(x)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_pretrained_features_and_in_chans(resnet18_file):
    reference, path = resnet18_file
    overlay = dict(file=path)
    features = timm.create_model('aconv_resnet18', pretrained=True, features_only=True, pretrained_cfg_overlay=overlay)
    gray = timm.create_model(
        'aconv_resnet18', pretrained=True, in_chans=1, num_classes=0, pretrained_cfg_overlay=overlay
    )
    gray_reference = timm.create_model(
        'resnet18', pretrained=True, in_chans=1, num_classes=0, pretrained_cfg_overlay=overlay
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps = features.eval()(x)
        expected = reference.forward_intermediates(x, intermediates_only=True)
        assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(maps, expected))
        x_gray = torch.randn(1, 1, 64, 64)
        assert torch.allclose(gray.eval()(x_gray), gray_reference.eval()(x_gray), rtol=1e-4, atol=1e-4)


def test_pretrained_adaptive_checkpoint_loads_unchanged(tmp_path):
    trained = _model('aconv_resnet18')
    with torch.no_grad():
        trained.layer2[1].conv2.sigma.uniform_(0.2, 0.9)  # as after training
    adaptive_file = tmp_path / 'aconv_resnet18.safetensors'
    save_file(trained.state_dict(), str(adaptive_file))
    loaded = timm.create_model('aconv_resnet18', pretrained=True, pretrained_cfg_overlay=dict(file=str(adaptive_file)))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), trained.state_dict().values()))


def test_pretrained_needs_grids_at_least_as_large_as_the_kernels(resnet18_file):
    _, path = resnet18_file
    with pytest.raises(ValueError, match=r"layer 'conv1' has a 7x7 kernel; preserve=True needs sizes >= 7"):
        timm.create_model('aconv_resnet18', pretrained=True, stem_kernel_size=5, pretrained_cfg_overlay=dict(file=path))


def test_smp_timm_universal_encoder():
    smp = pytest.importorskip('segmentation_models_pytorch')
    model = smp.Unet('tu-aconv_resnet34', encoder_weights=None, classes=2).eval()
    assert sum(isinstance(m, AdaptiveConv2d) for m in model.encoder.modules()) == 33
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


# ---- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'model_name,kwargs,arg',
    [
        ('aconv_resnet20', dict(kernel_size=2), 'kernel_size'),
        ('conv_resnet20', dict(kernel_size=2), 'kernel_size'),
        ('aconv_simple_cnn', dict(kernel_size=4), 'kernel_size'),
        ('aconv_resnet18', dict(kernel_size=2), 'kernel_size'),
        ('aconv_resnet18', dict(stem_kernel_size=6), 'stem_kernel_size'),
    ],
)
def test_even_kernel_sizes_fail_clearly(model_name, kwargs, arg):
    with torch.device('meta'), pytest.raises(ValueError, match=rf'^{arg} must be an odd integer >= 3 \(3, 5, 7, 9'):
        timm.create_model(model_name, **kwargs)


def test_bad_cifar_arguments_fail_clearly():
    with pytest.raises(ValueError, match=r"shortcut must be one of \('A', 'B'\), got 'C'"):
        timm.create_model('aconv_resnet20', shortcut='C')
    with pytest.raises(ValueError, match=r'depth must be 6n \+ 2'):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match=r'out channels .* must be a multiple of in channels'):
        ChannelRepeatShortcut(16, 24, stride=2)
    with pytest.raises(ValueError, match=r'img_size must be an int or \(height, width\)'):
        timm.create_model('conv_simple_cnn', img_size=(28,))


def test_package_import_registers_the_models():
    assert timm_aconv.models.CifarResNet is CifarResNet
    assert timm.is_model('aconv_resnet20') and timm.is_model('aconv_simple_cnn')


def test_converted_architecture_rebuilds_a_saved_conversion_in_one_line(tmp_path):
    """aconv_converted: timm's base model and the recorded convert_convs arguments, so that timm's loader
    (local-dir:, hf-hub:) rebuilds a converted model from its config.json, with equal logits."""
    torch.manual_seed(0)
    model = timm.create_model(
        'aconv_converted', base='resnet10t', convert=dict(sizes=[5], exclude=['stem.*']), num_classes=4, in_chans=1
    )
    assert {layer.kernel_size for layer in timm_aconv.adaptive_layers(model)} == {(5, 5)}
    assert not any(name.startswith('stem') for name, _ in timm_aconv.named_adaptive_layers(model))
    timm.models.save_for_hf(model, str(tmp_path), safe_serialization=True)
    config = json.loads((tmp_path / 'config.json').read_text())
    assert config['architecture'] == 'aconv_converted' and config['model_args']['base'] == 'resnet10t'
    restored = timm.create_model(f'local-dir:{tmp_path}', pretrained=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model.eval()(x))
    default = timm.create_model('aconv_converted')  # resnet18, convert_convs' defaults
    assert {layer.kernel_size for layer in timm_aconv.adaptive_layers(default)} == {(7, 7)}
    with pytest.raises(ValueError, match="base must be the name of a timm model, got ''"):
        timm.create_model('aconv_converted', base='')


@pytest.mark.parametrize('model_name', ['aconv_resnet20', 'aconv_simple_cnn', 'aconv_resnet18'])
@pytest.mark.parametrize('covariance_type', ['diag', 'full'])
def test_models_take_covariance_type_where_they_take_kernel_size(model_name, covariance_type):
    model = timm.create_model(model_name, covariance_type=covariance_type, num_classes=3)
    layers = list(timm_aconv.adaptive_layers(model))
    assert layers and all(layer.covariance_type == covariance_type and layer.sigma.ndim == 2 for layer in layers)
    channels, size = model.pretrained_cfg['input_size'][0], model.pretrained_cfg['input_size'][-1]
    model(torch.randn(2, channels, size, size)).square().mean().backward()
    assert all(layer.sigma.grad is not None for layer in layers)
    if covariance_type == 'full':
        assert all(layer.theta.grad is not None for layer in layers)
    with pytest.raises(ValueError, match="covariance_type must be one of 'spherical', 'diag', 'full'"):
        timm.create_model(model_name, covariance_type='round')
