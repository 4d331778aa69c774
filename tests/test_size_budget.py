"""The kernel-size budget: the differentiable FLOPs estimate, size_penalty, and the engine's size_budget."""

import json
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import timm_aconv
from timm_aconv import AdaptiveConv2d, estimated_kernel_flops, size_penalty, soft_kernel_size
from timm_aconv.engine import ClassificationMetric, ConfigError, EngineConfig, Trainer, set_seed
from timm_aconv.layers import OutputPixelTracker, energy_outside_windows

pytestmark = pytest.mark.usefixtures('one_torch_thread')

SIGMAS = (0.03, 0.06, 0.1, 0.13, 0.2, 0.5, 2.0)


def layer_with(sigmas, in_channels=2, grid=7, **kwargs) -> AdaptiveConv2d:
    layer = AdaptiveConv2d(in_channels, len(sigmas), grid, padding=grid // 2, sigma_bounds=(0.01, grid), **kwargs)
    with torch.no_grad():
        layer.sigma.copy_(torch.tensor(sigmas))
    return layer


def test_energy_outside_windows_exact():
    energy = torch.zeros(5, 5)
    energy[2, 2], energy[1, 2], energy[0, 0] = 2.0, 1.0, 1.0  # centre, ring 1, ring 2
    torch.testing.assert_close(energy_outside_windows(energy), torch.tensor([0.5, 0.25, 0.0]))
    assert energy_outside_windows(torch.zeros(2, 3, 3)).abs().sum() == 0
    with pytest.raises(ValueError, match='odd n'):
        energy_outside_windows(torch.ones(4, 4))


def test_soft_size_tends_to_the_exported_envelope_size_and_always_has_a_gradient():
    layer = layer_with(SIGMAS)
    for crop_tol in (1e-2, 1e-3):
        with torch.no_grad():  # W = 1: the product kernel is the envelope
            layer_ones = layer_with(SIGMAS, in_channels=1)
            layer_ones.weight.fill_(1.0)
        exported = timm_aconv.learned_kernel_sizes(layer_ones, crop_tol)['(model)'].sizes
        sharp = soft_kernel_size(layer, crop_tol, temperature=1e-3)
        assert sharp.detach().round().int().tolist() == exported
        assert len(set(exported)) >= 4
        soft = soft_kernel_size(layer, crop_tol)
        assert (soft.detach() - torch.tensor(exported)).abs().max() < 1.0
        layer.sigma.grad = None
        soft.sum().backward()
        # d size / d sigma: the Gaussian width 2 c (n - 1) sigma, also for envelopes wider than the grid
        c = float(torch.erfinv(torch.tensor(math.sqrt(1 - crop_tol), dtype=torch.float64)))
        torch.testing.assert_close(layer.sigma.grad, torch.full((len(SIGMAS),), 2 * c * 6))


def test_estimated_kernel_flops_weights_layers_by_their_multiply_adds():
    narrow, wide = layer_with((0.03,) * 6, in_channels=2), layer_with((2.0,) * 4, in_channels=6, stride=2)
    model = nn.Sequential(narrow, wide)
    per_pixel = estimated_kernel_flops(model, temperature=1e-3).detach()  # 1x1 and 7x7 filters
    assert float(per_pixel) == pytest.approx((2 * 6 * 1 + 6 * 4 * 49) / (2 * 6 * 49 + 6 * 4 * 49), rel=1e-4)
    pixels = OutputPixelTracker(model)
    model(torch.randn(1, 2, 8, 8))
    assert pixels == {narrow: 64, wide: 16}
    weighted = estimated_kernel_flops(model, temperature=1e-3, output_pixels=pixels).detach()
    assert float(weighted) == pytest.approx(
        (64 * 2 * 6 * 1 + 16 * 6 * 4 * 49) / (64 * 2 * 6 * 49 + 16 * 6 * 4 * 49), rel=1e-4
    )
    by_name = estimated_kernel_flops(model, temperature=1e-3, output_pixels={'0': 64, '1': 16}).detach()
    assert float(by_name) == pytest.approx(float(weighted))
    pixels.remove()
    with pytest.raises(ValueError, match="output_pixels has no entry for adaptive layer '1'"):
        estimated_kernel_flops(model, output_pixels={'0': 64})


def test_size_penalty_is_zero_within_budget_and_pushes_sigma_down_above_it():
    model = nn.Sequential(layer_with(SIGMAS))
    flops = float(estimated_kernel_flops(model).detach())
    below = size_penalty(model, target=min(1.0, flops + 0.1))
    assert float(below.detach()) == 0.0
    below.backward()
    assert not model[0].sigma.grad.any()
    model[0].sigma.grad = None
    above = size_penalty(model, target=flops / 2)
    assert float(above.detach()) == pytest.approx(1.0, rel=1e-5)  # (flops - target) / target
    above.backward()
    assert (model[0].sigma.grad > 0).all()  # a descent step shrinks every sigma


def test_every_kind_budgets_its_boxes_per_axis():
    """Layers other than the isotropic ones get a soft side per axis: each the slab that leaves at most
    crop_tol / ndim of the envelope energy outside along that axis (so the box of those sides leaves at most
    crop_tol), with the gradient of the Gaussian's width along the axis (a rotated one's projection)."""
    crop_tol = 1e-3
    layers = [
        AdaptiveConv2d(2, 3, 7, covariance_type='diag', sigma_bounds=(0.01, 7)),
        AdaptiveConv2d(2, 3, 7, covariance_type='full', sigma_bounds=(0.01, 7)),
        AdaptiveConv2d(2, 3, (7, 5)),
        timm_aconv.AdaptiveConv3d(2, 3, (5, 5, 3), covariance_type='diag', sigma_bounds=(0.01, 5)),
        timm_aconv.AdaptiveConv1d(2, 3, 9),
    ]
    with torch.no_grad():
        layers[0].sigma.copy_(torch.tensor([[0.05, 0.5], [0.1, 0.1], [2.0, 0.03]]))
        layers[1].sigma.copy_(torch.tensor([[0.05, 0.5], [0.05, 0.5], [0.3, 0.3]]))
        layers[1].theta.copy_(torch.tensor([0.0, math.pi / 2, 1.0]))
        layers[3].sigma.copy_(torch.tensor([[0.05, 0.3, 0.3], [0.2, 0.05, 1.0], [0.1, 0.1, 0.1]]))
    for layer in layers:
        ndim = len(layer.kernel_size)
        sharp = soft_kernel_size(layer, crop_tol, temperature=1e-4)
        assert sharp.shape == ((3,) if layer.isotropic else (3, ndim))
        sides = sharp.detach().round().long().view(3, -1)
        envelope = layer.envelope().detach().double()
        for index, box in enumerate(sides.tolist()):  # the box of those sides holds all but crop_tol
            box = box * ndim if len(box) == 1 else box
            window = tuple(slice((n - m) // 2, (n - m) // 2 + m) for n, m in zip(layer.kernel_size, box))
            kept = float(envelope[index][window].square().sum() / envelope[index].square().sum())
            assert kept >= 1 - crop_tol
            assert all(side % 2 == 1 and side <= n for side, n in zip(box, layer.kernel_size))
        layer.zero_grad()
        soft_kernel_size(layer, crop_tol).sum().backward()
        assert torch.isfinite(layer.sigma.grad).all() and (layer.sigma.grad > 0).all()
    assert sides_of(layers[0])[0].tolist() == [1, 7] and sides_of(layers[0])[2].tolist() == [7, 1]
    # rotated by 90°, the narrow axis lies along the columns
    assert sides_of(layers[1])[0].tolist() == [1, 7] and sides_of(layers[1])[1].tolist() == [7, 1]
    assert layers[1].theta.grad is not None and layers[1].theta.grad[2] != 0
    model = nn.Sequential(*[layer for layer in layers if len(layer.kernel_size) == 2])
    flops = estimated_kernel_flops(model, crop_tol, temperature=1e-4).detach()
    taps = sum(float(sides_of(layer).prod(-1).sum()) * 2 for layer in model)
    assert float(flops) == pytest.approx(taps / (2 * 3 * (49 + 49 + 35)), rel=1e-3)
    above = size_penalty(model, target=float(flops) / 2, crop_tol=crop_tol)
    model.zero_grad()
    above.backward()
    assert all((layer.sigma.grad >= 0).all() and layer.sigma.grad.sum() > 0 for layer in model)


def sides_of(layer) -> torch.Tensor:
    return soft_kernel_size(layer, 1e-3, temperature=1e-4).detach().round().long()


def test_budget_errors_name_the_argument():
    model = nn.Sequential(layer_with(SIGMAS))
    for target in (0, 1.5, -0.2, True):
        with pytest.raises(ValueError, match=r'target must be a kernel-FLOPs fraction in \(0, 1\]'):
            size_penalty(model, target=target)
    for crop_tol in (0, 1, 2.0):
        with pytest.raises(ValueError, match=r'crop_tol must be a number in \(0, 1\)'):
            size_penalty(model, crop_tol=crop_tol)
    with pytest.raises(ValueError, match='temperature must be > 0'):
        estimated_kernel_flops(model, temperature=0)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match='model has no adaptive layer'):
        size_penalty(plain)
    with pytest.raises(ValueError, match='model has no adaptive layer'):
        OutputPixelTracker(plain)


# ---------------------------------------------------------------------------------- engine
def tiny_model() -> nn.Module:
    return nn.Sequential(
        AdaptiveConv2d(1, 8, 7, padding=3, bias=False, sigma_bounds=(0.05, 7)),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4, 3),
    )


def train(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path), epochs=3, lr=0.05, progress=False, log_with='none', seed=0, save_every=0)
    settings.update(overrides)
    config = EngineConfig(**settings)
    set_seed(config.seed)
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(64, 1, 8, 8, generator=generator), torch.randint(0, 3, (64,), generator=generator)
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=16, shuffle=True)
    trainer = Trainer(
        tiny_model(),
        loader,
        DataLoader(TensorDataset(inputs, labels), batch_size=32),
        config,
        nn.CrossEntropyLoss(),
        ClassificationMetric(),
    )
    trainer.fit()
    return trainer


def test_training_with_a_budget_shrinks_the_kernels(tmp_path):
    free = train(tmp_path / 'free')
    budget = train(tmp_path / 'budget', size_budget=0.2, size_budget_weight=2.0)
    free_flops = float(estimated_kernel_flops(free.unwrapped_model).detach())
    budget_flops = float(estimated_kernel_flops(budget.unwrapped_model).detach())
    assert budget_flops < 0.5 * free_flops
    assert (
        timm_aconv.learned_kernel_sizes(budget.unwrapped_model).kernel_flops()
        < timm_aconv.learned_kernel_sizes(free.unwrapped_model).kernel_flops()
    )
    sigma = budget.unwrapped_model[0].sigma.detach()
    assert float(sigma.min()) >= 0.05  # still clamped after every step
    assert budget.output_pixels == {budget.unwrapped_model[0]: 64}
    # the logged training loss is the task's, without the penalty
    assert budget.history[0]['train_loss'] == pytest.approx(free.history[0]['train_loss'], rel=0.2)


def test_budget_config_errors(tmp_path):
    for value in (0, 1.5, -1):
        with pytest.raises(ConfigError, match=r'"size_budget".* LeftOpenUnitInterval: .* v>0 and v<=1'):
            EngineConfig(size_budget=value)
    with pytest.raises(ConfigError, match=r'"size_budget_weight": Not of type PositiveFloat: .* v>0'):
        EngineConfig(size_budget=0.5, size_budget_weight=0)
    loader = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)), batch_size=2)
    with pytest.raises(ConfigError, match=r'size_budget=0\.5 needs a model with adaptive layers'):
        Trainer(
            nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            loader,
            loader,
            EngineConfig(output_dir=str(tmp_path), size_budget=0.5, log_with='none'),
            nn.CrossEntropyLoss(),
            ClassificationMetric(),
        )


# ----------------------------------------------------------------------------------- sweep
def test_size_budget_sweep_recipe_end_to_end(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location('size_budget', root / 'recipes' / 'size_budget.py')
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    argv = [
        '--config',
        str(root / 'recipes/configs/size_budget_digits.yaml'),
        '--img_size',
        'null',
        '--epochs',
        '1',
        '--max_steps_per_epoch',
        '3',
        '--repeats',
        '1',
        '--budgets',
        '0.3',
        '--train_crop_budgets',
        'null,0.3',
        '--conv_kernel_sizes',
        '3',
        '--latency_batch',
        '4',
        '--latency_rounds',
        '2',
        '--output_dir',
        str(tmp_path),
        '--progress',
        'false',
        '--log_with',
        'none',
        '--export_strategy',
        'bucketed',
    ]  # auto would re-time: a choice may differ
    recipe.main(argv)
    output = capsys.readouterr().out
    assert '| arm | runs | val. accuracy deployed (%) |' in output and '| ACONV ≤ 0.3 | 1 |' in output
    result = json.loads((tmp_path / 'size_budget.json').read_text())
    assert [arm['arm'] for arm in result['arms']] == [
        'CONV 3×3',
        'ACONV',
        'ACONV ≤ 0.3',
        'ACONV, train crop',
        'ACONV ≤ 0.3, train crop',
    ]
    assert 'training time (s)' in output and 'train_crop_tol=0.001' in output
    conv, _aconv, budget, _crop, budget_crop = result['runs']
    assert [run['train_crop_tol'] for run in result['runs']] == [None, None, None, 1e-3, 1e-3]
    assert all(run['train_seconds'] > 0 for run in result['runs'])
    assert budget_crop['budget'] == 0.3 and 0 <= budget_crop['export_error'] < 0.1
    assert conv['kernel_flops'] == pytest.approx(9 / 49)  # both convolutions at 3x3 vs the 7x7 grid
    assert 0 < budget['kernel_flops'] <= 1 and 0 < budget['estimated_kernel_flops'] <= 1
    assert 'estimated_kernel_flops' not in conv and 0 <= budget['export_error'] < 0.1
    assert all(run['latency_ms'] > 0 and 0 <= run['deployed_val_accuracy'] <= 1 for run in result['runs'])
    assert (tmp_path / 'size_budget.png').stat().st_size > 0
    assert len((tmp_path / 'size_budget.csv').read_text().splitlines()) == 6
    # --resume reads the finished runs (history and model.safetensors) back: no training, same accuracies
    metrics = tmp_path / 'aconv_budget0.3' / 'seed0' / 'metrics.json'
    before = metrics.stat().st_mtime_ns
    recipe.main([*argv, '--resume'])
    assert metrics.stat().st_mtime_ns == before
    again = json.loads((tmp_path / 'size_budget.json').read_text())['runs']
    assert [run['deployed_val_accuracy'] for run in again] == [run['deployed_val_accuracy'] for run in result['runs']]
    assert [run['train_seconds'] for run in again] == [run['train_seconds'] for run in result['runs']]  # kept
