"""The classification recipe, the comparison protocol and the demo, end to end on offline data"""

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

import timm_aconv
from timm_aconv.engine import Callback, ConfigError
from timm_aconv.engine.loaders import build_loaders, process_batch_size
from timm_aconv.experiments.classification import ClassificationConfig, build_data, create_classifier
from timm_aconv.experiments.compare import (
    CompareConfig,
    best_sizes,
    best_versus_best,
    comparison_markdown,
    run_config,
    summarize,
)
from timm_aconv.experiments.datasets import (
    ArrayDataset,
    DataInfo,
    DatasetNotFoundError,
    build_classification_data,
    build_transform,
    clutter_canvas,
)
from timm_aconv.experiments.statistics import cohens_d, holm_adjust, ttest_peaks

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
    recipe.main(
        [
            '--config',
            str(ROOT / 'recipes/configs/digits.yaml'),
            '--epochs',
            '2',
            '--img_size',
            '8',
            '--output_dir',
            str(tmp_path),
            *FAST,
        ]
    )
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
    recipe.main(
        [
            '--dataset',
            'digits',
            '--img_size',
            '8',
            '--kernel_sizes',
            '3,5',
            '--repeats',
            '2',
            '--epochs',
            '1',
            '--max_steps_per_epoch',
            '6',
            '--lr',
            '0.01',
            '--save_every',
            '0',
            '--output_dir',
            str(tmp_path),
            *FAST,
        ]
    )
    output = capsys.readouterr().out
    assert (
        '| kernel | CONV mean±std (%) | CONV max (%) | ACONV mean±std (%) | ACONV max (%) | t | p | p (Holm) | d |'
        in output
    )
    result = json.loads((tmp_path / 'comparison.json').read_text())
    assert [row['kernel_size'] for row in result['rows']] == [3, 5]
    for row in result['rows']:
        assert math.isfinite(row['t']) and 0.0 < row['p'] <= row['p_holm'] <= 1.0 and math.isfinite(row['d'])
        assert row['repeats'] == 2
    assert all(len(result['peaks'][arm][size]) == 2 for arm in ('CONV', 'ACONV') for size in ('3', '5'))
    highest = {size: max(result['peaks']['CONV'][str(size)] + result['peaks']['ACONV'][str(size)]) for size in (3, 5)}
    assert result['best_size'] == max(highest, key=highest.get)  # the highest peak over both arms
    assert {'conv_size', 'aconv_size', 't', 'p', 'd'} <= set(result['best_versus_best'])
    assert len((tmp_path / 'comparison.csv').read_text().splitlines()) == 4  # header + 2 sizes + best vs best
    assert (tmp_path / 'comparison_curves.png').stat().st_size > 0
    # settings.yaml: every run's resolved settings; digits re-splits per repeat from the repeat's seed
    settings = yaml.safe_load((tmp_path / 'settings.yaml').read_text())
    assert settings['comparison']['kernel_sizes'] == [3, 5] and settings['runs_common']['dataset'] == 'digits'
    assert sorted(settings['runs']) == sorted(
        f'{arm}_k{size}/seed{seed}' for arm in ('conv', 'aconv') for size in (3, 5) for seed in (0, 1)
    )
    assert (
        settings['runs']['aconv_k5/seed1']['split_seed'] == 1 and settings['runs']['conv_k3/seed0']['split_seed'] == 0
    )
    assert (
        settings['runs']['conv_k5/seed1']['model'] == 'conv_simple_cnn'
        and settings['runs']['conv_k5/seed1']['kernel_size'] == 5
    )
    # a run directory per arm, size and seed; --resume reads finished runs back instead of training
    assert (tmp_path / 'aconv_k5' / 'seed1' / 'metrics.json').is_file()
    before = (tmp_path / 'aconv_k5' / 'seed1' / 'metrics.json').stat().st_mtime_ns
    recipe.main(
        [
            '--dataset',
            'digits',
            '--img_size',
            '8',
            '--kernel_sizes',
            '3,5',
            '--repeats',
            '2',
            '--epochs',
            '1',
            '--max_steps_per_epoch',
            '6',
            '--lr',
            '0.01',
            '--save_every',
            '0',
            '--resume',
            '--output_dir',
            str(tmp_path),
            *FAST,
        ]
    )
    assert (tmp_path / 'aconv_k5' / 'seed1' / 'metrics.json').stat().st_mtime_ns == before
    assert json.loads((tmp_path / 'comparison.json').read_text())['rows'] == result['rows']


def test_compare_resume_continues_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch):
    """A comparison stopped in the middle of a run continues it from its newest checkpoint: the same history as
    an uninterrupted comparison; finished runs are read back, interrupted ones resumed, not started again."""
    import timm_aconv.experiments.compare as compare_module
    from timm_aconv.recipes import compare as recipe

    trained = []
    original = compare_module.train_classification

    def recording(run, **kwargs):
        trained.append((Path(run.output_dir).relative_to(run.output_dir.rsplit('/', 2)[0]).as_posix(), run.resume))
        return original(run, **kwargs)

    monkeypatch.setattr(compare_module, 'train_classification', recording)

    def run(output_dir, epochs, resume=False):
        args = ['--dataset', 'digits', '--img_size', '8', '--kernel_sizes', '3', '--repeats', '2', '--lr', '0.01',
                '--max_steps_per_epoch', '4', '--save_every', '1', '--output_dir', str(output_dir), *FAST]  # fmt: skip
        recipe.main([*args, '--epochs', str(epochs)] + (['--resume'] if resume else []))
        histories = {
            name: [record['val_accuracy'] for record in json.loads((output_dir / name / 'metrics.json').read_text())]
            for name in ('conv_k3/seed0', 'conv_k3/seed1', 'aconv_k3/seed0', 'aconv_k3/seed1')
        }
        return histories, json.loads((output_dir / 'comparison.json').read_text())['rows']

    whole = run(tmp_path / 'whole', 3)
    interrupted = tmp_path / 'interrupted'
    run(interrupted, 3)
    for run_folder in ('conv_k3/seed1', 'aconv_k3/seed0'):  # stopped after the first epoch: later checkpoints gone
        folder = interrupted / run_folder
        checkpoints = sorted((folder / 'checkpoints').iterdir())
        for checkpoint in checkpoints[1:]:
            shutil.rmtree(checkpoint)
        history = json.loads((folder / 'metrics.json').read_text())
        (folder / 'metrics.json').write_text(json.dumps(history[:1]))
    trained.clear()
    resumed = run(interrupted, 3, resume=True)
    assert resumed == whole and all(len(history) == 3 for history in resumed[0].values())
    assert sorted(trained) == [('aconv_k3/seed0', True), ('conv_k3/seed1', True)]


def test_demo_prints_the_table_and_the_files(tmp_path, capsys):
    from timm_aconv import demo

    demo.main(
        [
            '--kernel_sizes',
            '3',
            '--epochs',
            '1',
            '--max_steps_per_epoch',
            '4',
            '--repeats',
            '2',
            '--output_dir',
            str(tmp_path),
        ]
    )
    output = capsys.readouterr().out
    assert 'CONV vs ACONV on scikit-learn digits: kernel sizes [3], 2 repeats, 1 epochs each (4 runs)' in output
    assert '| 3×3 (best) |' in output and str(tmp_path / 'comparison_curves.png') in output


def test_two_processes_keep_sigma_and_windows_in_sync_count_validation_once_and_take_the_global_batch(tmp_path):
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        port = probe.getsockname()[1]
    torchrun = Path(sys.executable).with_name('torchrun')
    command = [
        str(torchrun),
        '--standalone',
        '--nproc_per_node',
        '2',
        f'--master_port={port}',
        str(ROOT / 'tests' / 'ddp_probe.py'),
        '--dataset',
        'digits',
        '--img_size',
        '8',
        '--kernel_size',
        '5',
        '--epochs',
        '2',
        '--batch_size',
        '128',
        '--val_batch_size',
        '14',
        '--lr',
        '0.05',
        '--sigma_init',
        '0.05,0.1',
        '--model_kwargs',
        '{sigma_bounds: [0.05, 5]}',
        '--train_crop_tol',
        '1e-3',
        '--train_crop_interval',
        '3',
        '--cpu',
        '--output_dir',
        str(tmp_path),
        *FAST,
    ]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr[-3000:]
    ranks = [torch.load(tmp_path / f'sigma_rank{rank}.pt', weights_only=True) for rank in (0, 1)]
    # batch_size 128 is the global batch: 2 × 64 per step, as many optimizer steps per epoch as one process
    # with batch 128 takes (ceil(1437 / 128) = 12; per-process batches of 128 would take 6)
    train_set, val_set, _ = build_classification_data('digits', img_size=8)
    steps_one_process = len(build_loaders(train_set, val_set, batch_size=128)[0])
    assert steps_one_process == 12
    assert len(ranks[0]) == len(ranks[1]) == 2 * steps_one_process
    for step_rank0, step_rank1 in zip(*ranks):
        assert torch.equal(step_rank0['sigma'], step_rank1['sigma'])
        assert torch.equal(step_rank0['windows'], step_rank1['windows'])  # the same training crop on every rank
        assert bool(((step_rank0['sigma'] >= step_rank0['low']) & (step_rank0['sigma'] <= step_rank0['high'])).all())
    history = json.loads((tmp_path / 'metrics.json').read_text())
    assert [record['step'] for record in history] == [steps_one_process, 2 * steps_one_process]
    assert any(bool((step['windows'] < 5).any()) for step in ranks[0])  # the crop was on
    assert [record['val_samples'] for record in history] == [360, 360]  # 52 batches of 7 over 2 ranks, no repeats
    # the gathered accuracy is the single-process accuracy of the saved model on the whole validation set
    from safetensors.torch import load_file

    info = DataInfo('digits', 10, 1, (8, 8))
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
    assert not (tmp_path / 'nowhere').exists()  # sklearn made lfw_home there before failing: removed again


def test_a_failed_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def download_fails(root, train, download):  # as torchvision does offline: folders first, then the URL
        (Path(root) / 'cifar-10-batches-py' / 'tmp').mkdir(parents=True)
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(torchvision.datasets, 'CIFAR10', download_fails)
    (tmp_path / 'data' / 'mnist').mkdir(parents=True)  # a dataset already there stays
    with pytest.raises(DatasetNotFoundError, match='URLError: <urlopen error no network>'):
        build_classification_data('cifar10', data_dir=str(tmp_path / 'data'))
    assert sorted(path.name for path in (tmp_path / 'data').iterdir()) == ['mnist']
    with pytest.raises(DatasetNotFoundError):
        build_classification_data('cifar10', data_dir=str(tmp_path / 'fresh'))
    assert not (tmp_path / 'fresh').exists()


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


PAPER_SHAPES = dict(
    mnist=(1, 28, 28, 10),
    fashion_mnist=(1, 28, 28, 10),
    cifar10=(3, 32, 32, 10),
    mnist_cluttered=(1, 60, 60, 10),
    lfw=(1, 62, 47, 62),
)
# the paper's rows; the low-data variant (one size, a subset) is tested in test_fashion_mnist.py
PAPER_CONFIGS = sorted(
    path.name
    for pattern in ('simple_cnn_*.yaml', 'resnet_*.yaml')
    for path in (ROOT / 'recipes/configs').glob(pattern)
    if not path.stem.endswith('_lowdata')
)


@pytest.mark.parametrize('config_file', PAPER_CONFIGS)
def test_paper_configs_load_in_both_recipes_and_build_their_model(config_file):
    from timm_aconv.engine import parse_config

    path = str(ROOT / 'recipes/configs' / config_file)
    config = parse_config(ClassificationConfig, ['--config', path])
    compare = parse_config(CompareConfig, ['--config', path])
    simple = config_file.startswith('simple_cnn')
    # the sizes the authors ran: 3/5/7/9 for the simple CNN, 3/5/7 for the ResNets (9 on request)
    assert compare.kernel_sizes == ([3, 5, 7, 9] if simple else [3, 5, 7]) and compare.repeats == 5
    assert parse_config(CompareConfig, ['--config', path, '--kernel_sizes', '3,5,7,9']).kernel_sizes == [3, 5, 7, 9]
    assert compare.baseline_model == config.model.replace('aconv_', 'conv_')
    # the authors' preprocessing and augmentation
    assert config.input_norm == (
        'none' if config.dataset == 'mnist_cluttered' else 'pixel_mean' if simple else 'standardize'
    )
    assert config.augment_shift == (0.1 if config_file == 'simple_cnn_lfw.yaml' else 0.2)
    assert config.split_seed is None  # a new split per repeat where there is no official one
    channels, height, width, classes = PAPER_SHAPES[config.dataset]
    model = create_classifier(config, DataInfo(config.dataset, classes, channels, (height, width)))
    layers = list(timm_aconv.adaptive_layers(model))
    assert layers and all(layer.kernel_size == (config.kernel_size,) * 2 for layer in layers)
    assert model.eval()(torch.randn(2, channels, height, width)).shape == (2, classes)
    if config_file == 'resnet_mnist.yaml':
        assert config.drop_rate == 0.25  # the authors' code (the paper's table: 0.5, noted in the config)


@pytest.mark.parametrize('config_file', sorted(path.name for path in (ROOT / 'recipes/configs').glob('*.yaml')))
def test_every_config_opens_with_its_departures_from_the_paper(config_file):
    lines = (ROOT / 'recipes/configs' / config_file).read_text().splitlines()
    assert lines[0].startswith('# paper vs this config')
    block = lines[1 : lines.index('#')]
    assert block and all(line.startswith(('# - ', '#   ')) for line in block)
    if config_file != 'learn_filters.yaml':  # the one recipe without batches
        assert any('global batch' in line for line in block)


def _stack(dataset):
    return torch.stack([dataset[index][0] for index in range(len(dataset))])


@pytest.fixture(scope='module')
def lfw_data_dir(tmp_path_factory):
    """A tiny offline LFW as scikit-learn stores it: lfw_home/lfw_funneled/<person>/*.jpg (250×250 RGB)
    plus the three pairs files it checks for; 3 people with >= 20 images, one with 5 (left out)."""
    from PIL import Image

    root = tmp_path_factory.mktemp('lfw')
    home = root / 'lfw_home'
    rng = np.random.default_rng(0)
    for person, count in (('Ada_Lovelace', 20), ('Alan_Turing', 21), ('Grace_Hopper', 20), ('Few_Photos', 5)):
        folder = home / 'lfw_funneled' / person
        folder.mkdir(parents=True)
        for index in range(count):  # a random gray level with a white square in the face crop
            pixels = np.full((250, 250, 3), rng.integers(0, 200), dtype=np.uint8)
            pixels[100:160, 100:150] = 255
            Image.fromarray(pixels).save(folder / f'{person}_{index:04d}.jpg')
    for name in ('pairsDevTrain.txt', 'pairsDevTest.txt', 'pairs.txt'):
        (home / name).write_text('')
    return str(root)


def test_lfw_pixels_are_scaled_to_unit_range_once(lfw_data_dir):
    train, val, info = build_classification_data('lfw', data_dir=lfw_data_dir, download=False)
    assert info == DataInfo('lfw', 3, 1, (62, 47)) and len(train) + len(val) == 61
    images = _stack(train)
    assert images.shape[1:] == (1, 62, 47)
    # the white squares reach 1 (divided by 255 twice, as before, they stayed below 0.004)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert float(images.max()) > 0.95 and 0.1 < float(images.mean()) < 0.9


@pytest.mark.parametrize('dataset', ['digits', 'lfw'])
def test_each_repeat_draws_its_own_split_shared_by_both_arms(dataset, lfw_data_dir):
    config = CompareConfig(dataset=dataset, data_dir=lfw_data_dir, download=False, kernel_sizes=[3], repeats=2)

    def val_indices(compare: CompareConfig, arm: str, repeat: int) -> np.ndarray:
        return build_data(run_config(compare, arm, 3, repeat))[1].indices

    first = val_indices(config, 'ACONV', 0)
    assert np.array_equal(first, val_indices(config, 'ACONV', 0)) and np.array_equal(
        first, val_indices(config, 'CONV', 0)
    )
    assert not np.array_equal(np.sort(first), np.sort(val_indices(config, 'ACONV', 1)))
    fixed = CompareConfig(
        dataset=dataset, data_dir=lfw_data_dir, download=False, kernel_sizes=[3], repeats=2, split_seed=4
    )
    assert np.array_equal(val_indices(fixed, 'ACONV', 0), val_indices(fixed, 'CONV', 1))


def test_official_splits_stay_fixed_across_repeats():
    config = CompareConfig(dataset='mnist', kernel_sizes=[3], repeats=3)
    assert [run_config(config, 'ACONV', 3, repeat).split_seed for repeat in range(3)] == [0, 0, 0]
    assert [run_config(config, 'ACONV', 3, repeat).seed for repeat in range(3)] == [0, 1, 2]


def test_input_normalization_uses_the_training_split_only():
    raw_train, raw_val, _ = build_classification_data('digits', split_seed=3)
    train, val, _ = build_classification_data('digits', split_seed=3, input_norm='pixel_mean')
    train_mean = _stack(raw_train).mean(0)
    torch.testing.assert_close(_stack(train), _stack(raw_train) - train_mean)
    torch.testing.assert_close(_stack(val), _stack(raw_val) - train_mean)  # the training mean, not the validation one
    assert float(_stack(train).mean(0).abs().max()) < 1e-5 and float(_stack(val).mean(0).abs().max()) > 1e-3
    standardized = build_classification_data('digits', split_seed=3, input_norm='standardize')[0]
    torch.testing.assert_close(_stack(standardized), (_stack(raw_train) - 127 / 255) / float(raw_train.images.std()))
    with pytest.raises(
        ConfigError, match=r"\"input_norm\": Expected a typing.Literal\['none', 'pixel_mean', 'standardize'\]"
    ):
        ClassificationConfig(input_norm='zca')


def test_shift_augmentation_fills_borders_like_keras_nearest():
    torch.manual_seed(0)
    flat = ArrayDataset(np.full((1, 12, 12, 1), 0.7, np.float32), np.zeros(1), build_transform(None, True, shift=0.4))
    for _ in range(6):  # edge replication keeps a flat image flat; zero filling brought in black bands
        torch.testing.assert_close(flat[0][0], torch.full((1, 12, 12), 0.7))
    line = np.zeros((1, 20, 20, 1), np.float32)
    line[0, :, 10] = 1.0
    shifted = ArrayDataset(line, np.zeros(1), build_transform(None, True, shift=0.1))
    columns = {int(shifted[0][0][0, 10].argmax()) for _ in range(30)}
    assert len(columns) > 2 and columns <= set(range(7, 13))  # at most 0.1 × 20 = 2 pixels (+ the flip's 1)


def test_global_batch_must_divide_by_the_processes():
    assert process_batch_size(128, 4) == 32
    with pytest.raises(ConfigError, match=r'batch_size=10 is the global batch .* number of processes \(4\)'):
        process_batch_size(10, 4)


@pytest.mark.parametrize(
    'recipe_name, config_name',
    [
        ('train_classification', 'ClassificationConfig'),
        ('compare', 'CompareConfig'),
        ('train_segmentation', 'SegmentationConfig'),
    ],
)
def test_help_says_batch_size_is_global(recipe_name, config_name, capsys):
    with pytest.raises(SystemExit):
        load_recipe(recipe_name).main(['--help'])
    assert 'GLOBAL batch' in ' '.join(capsys.readouterr().out.split()), config_name


def test_simple_cnn_takes_the_authors_keras_constants_on_request():
    shape = dict(img_size=4, in_chans=1, num_classes=10, width=4, hidden_size=1000)
    default = timm.create_model('conv_simple_cnn', **shape)
    keras = timm.create_model('conv_simple_cnn', bn_momentum=0.01, bn_eps=1e-3, weight_init='keras', **shape)
    assert all((bn.momentum, bn.eps) == (0.1, 1e-5) for bn in (default.bn1, default.bn2, default.bn3))
    assert all((bn.momentum, bn.eps) == (0.01, 1e-3) for bn in (keras.bn1, keras.bn2, keras.bn3))
    # fc1: fan_in 4 * 2 * 2 = 16, fan_out 1000: He-uniform bound sqrt(6 / 16), Glorot-uniform sqrt(6 / 1016)
    assert 0.5 < float(keras.fc1.weight.detach().abs().max()) <= math.sqrt(6 / 16)
    assert float(default.fc1.weight.detach().abs().max()) <= math.sqrt(6 / 1016)
    with pytest.raises(ValueError, match="weight_init must be one of \\('default', 'keras'\\)"):
        timm.create_model('conv_simple_cnn', weight_init='lecun')


def test_paper_simple_cnn_arms_get_the_authors_initializers():
    from timm_aconv.engine import parse_config

    config = parse_config(CompareConfig, ['--config', str(ROOT / 'recipes/configs/simple_cnn_mnist.yaml')])
    info = DataInfo('mnist', 10, 1, (28, 28))
    conv, aconv = (create_classifier(run_config(config, arm, 9, 0), info) for arm in ('CONV', 'ACONV'))
    assert (conv.bn2.momentum, conv.bn2.eps) == (aconv.bn2.momentum, aconv.bn2.eps) == (0.01, 1e-3)
    # conv2: 32 -> 32 filters of 9×9, fan_in = fan_out = 2592: Glorot bound sqrt(6 / 5184), He bound sqrt(6 / 2592)
    glorot, he = math.sqrt(6 / 5184), math.sqrt(6 / 2592)
    assert 0.95 * glorot < float(conv.conv2.weight.detach().abs().max()) <= glorot  # CONV: Keras' Conv2D default
    assert 0.95 * he < float(aconv.conv2.weight.detach().abs().max()) <= he  # ACONV: the authors' layer


def test_best_size_is_the_highest_peak_over_both_arms():
    peaks = {
        'CONV': {3: [0.95, 0.96, 0.97], 7: [0.90, 0.91, 0.92]},
        'ACONV': {3: [0.93, 0.94, 0.95], 7: [0.94, 0.95, 0.96]},
    }
    assert best_sizes(peaks) == dict(CONV=3, ACONV=7, both=3)  # the old rule, ACONV's highest peak, chose 7
    rows, best = summarize(peaks), best_versus_best(peaks)
    assert (best['conv_size'], best['aconv_size']) == (3, 7)
    assert (best['t'], best['p']) == ttest_peaks(peaks['ACONV'][7], peaks['CONV'][3])
    assert [row['p_holm'] for row in rows] == pytest.approx(holm_adjust([row['p'] for row in rows]))
    assert rows[0]['d'] == pytest.approx(cohens_d(peaks['ACONV'][3], peaks['CONV'][3])) and rows[0]['d'] < 0
    table = comparison_markdown(rows, best, best_sizes(peaks)['both'], 'CONV vs ACONV')
    assert '| 3×3 (best) |' in table and '| 7×7 |' in table and '| best CONV 3×3 vs best ACONV 7×7 |' in table
    assert 'highest peak over both arms' in table and 'highest ACONV peak' not in table


class KeepEpochWeights(Callback):
    """The trained model after every epoch, and the trainer."""

    def __init__(self) -> None:
        self.weights, self.trainer = [], None

    def on_epoch_end(self, trainer, record) -> None:
        self.trainer = trainer
        self.weights.append({name: tensor.clone() for name, tensor in trainer.unwrapped_model.state_dict().items()})


def test_trained_models_reload_with_timm_and_the_config_reruns_the_run(tmp_path, monkeypatch):
    recipe = load_recipe('train_classification')
    pushed = {}
    monkeypatch.setattr(
        timm.models,
        'push_to_hf_hub',
        lambda model, repo_id, **kwargs: pushed.update(
            repo_id=repo_id, weights={name: tensor.clone() for name, tensor in model.state_dict().items()}, **kwargs
        ),
    )
    epochs = KeepEpochWeights()
    recipe.main(
        [
            '--config',
            str(ROOT / 'recipes/configs/digits.yaml'),
            '--epochs',
            '3',
            '--max_steps_per_epoch',
            '4',
            '--img_size',
            '8',
            '--kernel_size',
            '5',
            '--lr',
            '0.05',
            '--plots',
            'false',
            '--save_every',
            '0',
            '--val_batch_size',
            '360',
            '--push_to_hub',
            'me/digits',
            '--output_dir',
            str(tmp_path / 'run'),
            *FAST,
        ],
        callbacks=[epochs],
    )
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


def test_converted_model_reloads_with_timms_loader_in_one_line(tmp_path):
    recipe = load_recipe('train_classification')
    epochs = KeepEpochWeights()
    recipe.main(
        [
            '--model',
            'resnet10t',
            '--convert',
            '--kernel_size',
            '5',
            '--dataset',
            'synthetic',
            '--epochs',
            '1',
            '--max_steps_per_epoch',
            '2',
            '--batch_size',
            '16',
            '--val_batch_size',
            '240',
            '--save_every',
            '0',
            '--plots',
            'false',
            '--output_dir',
            str(tmp_path),
            *FAST,
        ],
        callbacks=[epochs],
    )
    saved = json.loads((tmp_path / 'best' / 'config.json').read_text())
    assert saved['architecture'] == 'aconv_converted'
    assert saved['model_args']['base'] == 'resnet10t' and saved['model_args']['convert'] == {'sizes': [5]}
    model = timm.create_model(f'local-dir:{tmp_path / "best"}', pretrained=True)
    trained = epochs.trainer.unwrapped_model
    assert [layer.kernel_size for layer in timm_aconv.adaptive_layers(model)] == [
        layer.kernel_size for layer in timm_aconv.adaptive_layers(trained)
    ]
    images = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(images), trained.eval()(images))


def test_compare_does_not_push_its_runs():
    from timm_aconv.experiments.compare import CompareConfig

    with pytest.raises(ValueError, match='push_to_hub pushes the model of one training run'):
        CompareConfig(push_to_hub='me/models')
