""" The classification recipe, the comparison protocol and the demo, end to end on offline data """
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import timm_aconv
from timm_aconv.train import Callback
from timm_aconv.train.classification import ClassificationConfig, create_classifier
from timm_aconv.train.datasets import DataInfo, DatasetNotFoundError, build_classification_data, clutter_canvas

ROOT = Path(__file__).resolve().parents[1]
FAST = ['--progress', 'false', '--log_with', 'none', '--num_threads', '1']


pytestmark = pytest.mark.usefixtures('one_torch_thread')  # the recipes run with --num_threads 1


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'recipes' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_classification_recipe_on_the_offline_default(tmp_path, capsys):
    recipe = load_recipe('train_classification')
    recipe.main(['--config', str(ROOT / 'recipes/configs/digits.yaml'), '--epochs', '2', '--img_size', '8',
                 '--output_dir', str(tmp_path), *FAST])
    assert 'aconv_simple_cnn on digits: peak validation accuracy' in capsys.readouterr().out
    history = json.loads((tmp_path / 'metrics.json').read_text())
    assert [record['val_samples'] for record in history] == [360, 360]
    assert history[-1]['val_accuracy'] > 0.5  # 10 classes: chance is 0.1
    sigmas = json.loads((tmp_path / 'sigmas.json').read_text())
    assert len(sigmas) == 2  # the simple CNN's two adaptive layers
    assert all(len(per_epoch) == 3 for per_epoch in sigmas.values())  # initial + 2 epochs
    for name in ('learning_curves.png', 'sigma_histograms.png', 'model.safetensors', 'metrics.csv'):
        assert (tmp_path / name).stat().st_size > 0, name


def test_compare_table_has_real_t_tests(tmp_path, capsys):
    recipe = load_recipe('compare')
    recipe.main(['--dataset', 'digits', '--img_size', '8', '--kernel_sizes', '3,5', '--repeats', '2',
                 '--epochs', '1', '--max_steps_per_epoch', '6', '--lr', '0.01', '--save_every', '0',
                 '--output_dir', str(tmp_path), *FAST])
    output = capsys.readouterr().out
    assert '| kernel | CONV mean±std (%)' in output
    result = json.loads((tmp_path / 'comparison.json').read_text())
    assert [row['kernel_size'] for row in result['rows']] == [3, 5]
    for row in result['rows']:
        assert math.isfinite(row['t']) and 0.0 < row['p'] <= 1.0
        assert row['repeats'] == 2
    assert all(len(result['peaks'][arm][size]) == 2 for arm in ('CONV', 'ACONV') for size in ('3', '5'))
    assert result['best_size'] in (3, 5)
    assert len((tmp_path / 'comparison.csv').read_text().splitlines()) == 3  # header + 2 sizes
    assert (tmp_path / 'comparison_curves.png').stat().st_size > 0
    # a run directory per arm, size and seed; --resume reads finished runs back instead of training
    assert (tmp_path / 'aconv_k5' / 'seed1' / 'metrics.json').is_file()
    before = (tmp_path / 'aconv_k5' / 'seed1' / 'metrics.json').stat().st_mtime_ns
    recipe.main(['--dataset', 'digits', '--img_size', '8', '--kernel_sizes', '3,5', '--repeats', '2',
                 '--epochs', '1', '--max_steps_per_epoch', '6', '--lr', '0.01', '--save_every', '0', '--resume',
                 '--output_dir', str(tmp_path), *FAST])
    assert (tmp_path / 'aconv_k5' / 'seed1' / 'metrics.json').stat().st_mtime_ns == before
    assert json.loads((tmp_path / 'comparison.json').read_text())['rows'] == result['rows']


def test_demo_prints_the_table_and_the_files(tmp_path, capsys):
    from timm_aconv import demo
    demo.main(['--kernel_sizes', '3', '--epochs', '1', '--max_steps_per_epoch', '4', '--repeats', '2',
               '--output_dir', str(tmp_path)])
    output = capsys.readouterr().out
    assert 'CONV vs ACONV on scikit-learn digits: kernel sizes [3], 2 repeats, 1 epochs each (4 runs)' in output
    assert '| 3×3 (best) |' in output and str(tmp_path / 'comparison_curves.png') in output


def test_two_processes_keep_sigma_in_sync_and_count_validation_once(tmp_path):
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    torchrun = Path(sys.executable).with_name('torchrun')
    command = [str(torchrun), '--standalone', '--nproc_per_node', '2', f'--master_port={port}',
               str(ROOT / 'tests' / 'ddp_probe.py'), '--dataset', 'digits', '--img_size', '8', '--kernel_size', '5',
               '--epochs', '2', '--max_steps_per_epoch', '3', '--batch_size', '16', '--val_batch_size', '7',
               '--lr', '0.05', '--sigma_init', '0.05,0.5', '--cpu', '--output_dir', str(tmp_path), *FAST]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f'sigma_rank{rank}.pt', weights_only=True) for rank in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 6  # 3 optimizer steps per epoch on each rank
    for step_rank0, step_rank1 in zip(*ranks):
        assert torch.equal(step_rank0['sigma'], step_rank1['sigma'])
        assert bool(((step_rank0['sigma'] >= step_rank0['low']) & (step_rank0['sigma'] <= step_rank0['high'])).all())
    history = json.loads((tmp_path / 'metrics.json').read_text())
    assert [record['val_samples'] for record in history] == [360, 360]  # 52 batches of 7 over 2 ranks, no repeats
    # the gathered accuracy is the single-process accuracy of the saved model on the whole validation set
    from safetensors.torch import load_file
    _, val_set, info = build_classification_data('digits', img_size=8)
    model = create_classifier(ClassificationConfig(kernel_size=5, img_size=8), info)
    model.load_state_dict(load_file(tmp_path / 'model.safetensors'))
    model.eval()
    images = torch.stack([val_set[index][0] for index in range(len(val_set))])
    labels = torch.tensor([val_set[index][1] for index in range(len(val_set))])
    with torch.no_grad():
        accuracy = (model(images).argmax(1) == labels).float().mean().item()
    assert history[-1]['val_accuracy'] == pytest.approx(accuracy, abs=1e-6)


def test_missing_dataset_error_names_dataset_path_and_remedy(tmp_path):
    recipe = load_recipe('train_classification')
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'cifar10' was not found in '.*nowhere'.*download=True"):
        recipe.main(['--dataset', 'cifar10', '--data_dir', str(tmp_path / 'nowhere'), '--download', 'false', *FAST])
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'lfw' .*fetch_lfw_people\(min_faces_per_person=20"):
        build_classification_data('lfw', data_dir=str(tmp_path / 'nowhere'), download=False)


def test_convert_option_makes_any_timm_model_adaptive():
    config = ClassificationConfig(model='resnet10t', convert=True, kernel_size=5)
    model = create_classifier(config, DataInfo('digits', 10, 1, (32, 32)))
    layers = list(timm_aconv.adaptive_layers(model))
    assert layers and all(layer.kernel_size == (5, 5) for layer in layers)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_model_kwargs_reach_the_timm_model():
    config = ClassificationConfig(model='conv_simple_cnn', kernel_size=3)
    model = create_classifier(config, DataInfo('digits', 10, 1, (8, 8)))
    assert not list(timm_aconv.adaptive_layers(model))
    assert all(module.kernel_size == (3, 3) for module in model.modules() if isinstance(module, torch.nn.Conv2d))
    with pytest.raises(ValueError, match="model 'no_such_net' is not a timm model"):
        ClassificationConfig(model='no_such_net')


def test_cluttered_canvas_is_deterministic_and_holds_the_digit():
    digits = np.zeros((3, 28, 28), dtype=np.float32)
    digits[:, 10:18, 10:18] = 1.0
    canvas = clutter_canvas(digits, index=1, seed=4)
    assert canvas.shape == (60, 60) and canvas.max() == 1.0
    assert np.array_equal(canvas, clutter_canvas(digits, index=1, seed=4))
    assert not np.array_equal(canvas, clutter_canvas(digits, index=2, seed=4))
    assert canvas.sum() >= 64  # the 8×8 stroke of the digit itself


def test_augmentation_repeats_under_the_same_torch_seed():
    train, _, _ = build_classification_data('digits', img_size=16, augment=True)
    torch.manual_seed(0)
    first = train[5][0]
    torch.manual_seed(0)
    assert torch.equal(first, train[5][0])
    assert first.shape == (1, 16, 16)


PAPER_SHAPES = dict(mnist=(1, 28, 28, 10), fashion_mnist=(1, 28, 28, 10), cifar10=(3, 32, 32, 10),
                    mnist_cluttered=(1, 60, 60, 10), lfw=(1, 62, 47, 62))


@pytest.mark.parametrize('config_file', sorted(
    path.name for pattern in ('simple_cnn_*.yaml', 'resnet_*.yaml') for path in (ROOT / 'recipes/configs').glob(pattern)))
def test_paper_configs_load_in_both_recipes_and_build_their_model(config_file):
    from timm_aconv.train import parse_config
    from timm_aconv.train.compare import CompareConfig
    path = str(ROOT / 'recipes/configs' / config_file)
    config = parse_config(ClassificationConfig, ['--config', path])
    compare = parse_config(CompareConfig, ['--config', path])
    assert compare.kernel_sizes == [3, 5, 7, 9] and compare.repeats == 5
    assert compare.baseline_model == config.model.replace('aconv_', 'conv_')
    channels, height, width, classes = PAPER_SHAPES[config.dataset]
    model = create_classifier(config, DataInfo(config.dataset, classes, channels, (height, width)))
    layers = list(timm_aconv.adaptive_layers(model))
    assert layers and all(layer.kernel_size == (config.kernel_size,) * 2 for layer in layers)
    assert model.eval()(torch.randn(2, channels, height, width)).shape == (2, classes)


class KeepEpochWeights(Callback):
    """ The trained model after every epoch, and the trainer. """

    def __init__(self) -> None:
        self.weights, self.trainer = [], None

    def on_epoch_end(self, trainer, record) -> None:
        self.trainer = trainer
        self.weights.append({name: tensor.clone() for name, tensor in trainer.unwrapped_model.state_dict().items()})


def test_trained_models_reload_with_timm_and_the_config_reruns_the_run(tmp_path, monkeypatch):
    recipe = load_recipe('train_classification')
    pushed = {}
    monkeypatch.setattr(timm.models, 'push_to_hf_hub', lambda model, repo_id, **kwargs: pushed.update(
        repo_id=repo_id, weights={name: tensor.clone() for name, tensor in model.state_dict().items()}, **kwargs))
    epochs = KeepEpochWeights()
    recipe.main(['--config', str(ROOT / 'recipes/configs/digits.yaml'), '--epochs', '3', '--max_steps_per_epoch', '4',
                 '--img_size', '8', '--kernel_size', '5', '--lr', '0.05', '--plots', 'false', '--save_every', '0',
                 '--val_batch_size', '360', '--push_to_hub', 'me/digits',
                 '--output_dir', str(tmp_path / 'run'), *FAST], callbacks=[epochs])
    history = json.loads((tmp_path / 'run' / 'metrics.json').read_text())
    best_epoch = json.loads((tmp_path / 'run' / 'best' / 'best.json').read_text())['epoch']
    assert best_epoch == min(history, key=lambda record: record['val_loss'])['epoch']
    images = torch.rand(5, 1, 8, 8)
    final = epochs.trainer.unwrapped_model.eval()
    for folder, weights in (('run', epochs.weights[-1]), ('run/best', epochs.weights[best_epoch - 1])):
        model = timm.create_model(f'local-dir:{tmp_path / folder}', pretrained=True).eval()
        assert type(model).__name__ == 'SimpleCnn' and model.num_classes == 10
        assert [layer.kernel_size for layer in timm_aconv.adaptive_layers(model)] == [(5, 5), (5, 5)]
        final.load_state_dict(weights)
        with torch.no_grad():
            assert torch.equal(model(images), final(images)), folder
        assert tuple(timm.data.resolve_data_config(model=model)['input_size']) == (1, 8, 8)
    # push_to_hub sends the best model with timm's own function
    assert pushed['repo_id'] == 'me/digits' and pushed['model_args']['kernel_size'] == 5
    assert all(torch.equal(tensor, epochs.weights[best_epoch - 1][name]) for name, tensor in pushed['weights'].items())
    # config.yaml reruns the run exactly
    recipe.main(['--config', str(tmp_path / 'run' / 'config.yaml'), '--output_dir', str(tmp_path / 'rerun')])
    assert json.loads((tmp_path / 'rerun' / 'metrics.json').read_text()) == history


def test_converted_model_reloads_in_the_documented_form(tmp_path):
    from safetensors.torch import load_file
    recipe = load_recipe('train_classification')
    epochs = KeepEpochWeights()
    recipe.main(['--model', 'resnet10t', '--convert', '--kernel_size', '5', '--dataset', 'synthetic', '--epochs', '1',
                 '--max_steps_per_epoch', '2', '--batch_size', '16', '--val_batch_size', '240', '--save_every', '0',
                 '--plots', 'false', '--output_dir', str(tmp_path),
                 *FAST], callbacks=[epochs])
    saved = json.loads((tmp_path / 'best' / 'config.json').read_text())
    assert saved['architecture'] == 'resnet10t' and saved['timm_aconv_convert'] == {'sizes': [5], 'sigma_init': None}
    with pytest.raises(RuntimeError, match='sigma'):  # the plain architecture has no sigma to load
        timm.create_model(f'local-dir:{tmp_path / "best"}', pretrained=True)
    model = timm.create_model(f'local-dir:{tmp_path / "best"}')
    timm_aconv.convert_convs(model, **saved['timm_aconv_convert'])
    model.load_state_dict(load_file(tmp_path / 'best' / 'model.safetensors'))
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), epochs.trainer.unwrapped_model.eval()(images))


def test_compare_does_not_push_its_runs():
    from timm_aconv.train.compare import CompareConfig
    with pytest.raises(ValueError, match='push_to_hub pushes the model of one training run'):
        CompareConfig(push_to_hub='me/models')
