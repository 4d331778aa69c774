"""Fashion-MNIST (and MNIST) from the original idx files where they are, the low-data setting, the low-data
comparison's config and the full-length GPU script's wiring; the real files of Debian's package when installed"""

import gzip
import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import timm_aconv.recipes  # noqa: F401  (registers the shipped configs: --config by name)
from timm_aconv.engine import ConfigError, parse_config, run_cli
from timm_aconv.experiments.classification import ClassificationConfig, build_data
from timm_aconv.experiments.compare import CompareConfig, run_config
from timm_aconv.experiments.datasets import (
    IDX_DATASETS,
    DatasetFileError,
    DatasetNotFoundError,
    IdxDataset,
    build_classification_data,
    idx_folders,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = ['--progress', 'false', '--log_with', 'none', '--num_threads', '1']
DEBIAN = Path('/usr/share/datasets/fashion-mnist')
STEMS = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the idx format: magic 0x0800 + dimensions, the sizes big-endian, then the bytes."""
    header = (0x0800 + array.ndim).to_bytes(4, 'big') + b''.join(size.to_bytes(4, 'big') for size in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def fake_split(count: int, seed: int):
    """``count`` 28×28 images, 10 classes in turn, each class a bright band at its own row plus noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 10).astype(np.uint8)
    images = rng.integers(0, 60, size=(count, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, 2 + 2 * label : 4 + 2 * label] = 250
    return images, labels


def write_idx_folder(folder: Path, gz: bool = True, train: int = 200, test: int = 50) -> dict:
    """The four idx files of a small Fashion-MNIST-like set in ``folder``; returns the arrays by stem."""
    folder.mkdir(parents=True, exist_ok=True)
    (train_images, train_labels), (test_images, test_labels) = fake_split(train, 0), fake_split(test, 1)
    arrays = dict(zip(STEMS, (train_images, train_labels, test_images, test_labels)))
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f'{stem}.gz').write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (folder / stem).write_bytes(data)
    return arrays


@pytest.fixture(scope='module')
def fashion_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('fashion')
    write_idx_folder(folder)
    return folder


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'recipes' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys, function) -> str:
    """What a recipe prints for ``function``'s error: one ``error:`` line on stderr and exit status 2."""
    with pytest.raises(SystemExit) as exited:
        run_cli(function)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ')
    return lines[0]


@pytest.mark.parametrize(
    'layout, gz',
    [('.', True), ('.', False), ('FashionMNIST/raw', False), ('FashionMNIST/raw', True), ('fashion-mnist', True)],
)
def test_idx_files_load_from_debians_torchvisions_or_a_plain_folder(tmp_path, layout, gz):
    arrays = write_idx_folder(tmp_path / layout, gz=gz)
    train, val, info = build_classification_data('fashion_mnist', data_dir=str(tmp_path), download=False)
    assert (len(train), len(val)) == (200, 50) and (info.num_classes, info.in_chans, info.img_size) == (10, 1, (28, 28))
    np.testing.assert_array_equal(train.labels, arrays['train-labels-idx1-ubyte'])
    np.testing.assert_array_equal(val.labels, arrays['t10k-labels-idx1-ubyte'])
    torch.testing.assert_close(val[3][0][0], torch.from_numpy(arrays['t10k-images-idx3-ubyte'][3] / 255).float())
    assert val[3][1] == 3


def test_mnist_reads_the_same_format(tmp_path):
    write_idx_folder(tmp_path / 'MNIST' / 'raw', gz=False)
    train, val, info = build_classification_data('mnist', data_dir=str(tmp_path), download=False)
    assert (len(train), len(val), info.name) == (200, 50, 'mnist')


def test_the_default_data_dir_also_searches_debians_folder(tmp_path, monkeypatch):
    assert idx_folders('fashion_mnist')[-1] == DEBIAN  # the default data_dir: 'data'
    assert DEBIAN not in idx_folders('fashion_mnist', str(tmp_path))  # a folder given: only there
    system = tmp_path / 'usr-share-datasets-fashion-mnist'
    write_idx_folder(system)
    monkeypatch.setitem(
        IDX_DATASETS,
        'fashion_mnist',
        IdxDataset('FashionMNIST', 'fashion-mnist', (str(system),), 'dataset-fashion-mnist'),
    )
    monkeypatch.chdir(tmp_path)  # no ./data here
    train, val, _ = build_classification_data('fashion_mnist', download=False)
    assert (len(train), len(val)) == (200, 50)


def test_missing_files_name_the_folders_searched_and_both_ways_to_get_them(tmp_path, capsys):
    recipe = load_recipe('train_classification')
    missing = tmp_path / 'nowhere'
    line = one_line_error(
        capsys,
        lambda: recipe.main(
            [
                '--config',
                'simple_cnn_fashion_mnist',
                '--data_dir',
                str(missing),
                '--download',
                'false',
                '--output_dir',
                str(tmp_path / 'run'),
                *FAST,
            ]
        ),
    )
    assert line.startswith(
        f"error: dataset 'fashion_mnist' was not found in '{missing}', '{missing}/FashionMNIST/raw', "
        f"'{missing}/fashion-mnist': none holds its four idx files (train-images-idx3-ubyte, "
    )
    assert 'apt-get install dataset-fashion-mnist' in line
    assert f"torchvision.datasets.FashionMNIST('{missing}', download=True)" in line
    assert not missing.exists() and not (tmp_path / 'run').exists()
    # three files of four are not the dataset either
    write_idx_folder(tmp_path / 'three')
    (tmp_path / 'three' / 't10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(DatasetNotFoundError, match=r"was not found in '.*three'"):
        build_classification_data('fashion_mnist', data_dir=str(tmp_path / 'three'), download=False)


def test_a_damaged_or_foreign_file_is_one_error_naming_it(tmp_path, capsys):
    folder = tmp_path / 'bad'
    write_idx_folder(folder, gz=False)
    images = folder / 'train-images-idx3-ubyte'
    good = images.read_bytes()

    def error_for(content: bytes, name: str = 'train-images-idx3-ubyte') -> str:
        (folder / name).write_bytes(content)
        try:
            return one_line_error(
                capsys, lambda: build_classification_data('fashion_mnist', data_dir=str(folder), download=False)
            )
        finally:
            write_idx_folder(folder, gz=False)

    assert error_for(good[:-100]) == (
        f"error: '{images}' holds {len(good) - 100} bytes, but its header announces 200x28x28 images "
        f'({len(good)} bytes): the file is truncated or damaged'
    )
    labels = (folder / 't10k-labels-idx1-ubyte').read_bytes()
    assert error_for(labels) == (
        f"error: '{images}' is not an idx file of images: its header starts with 0x00000801, expected 0x00000803"
    )
    assert (
        error_for(b'')
        == f"error: '{images}' is not an idx file of images: its header starts with nothing, expected 0x00000803"
    )
    wrong_labels = idx_bytes(np.full(200, 12, dtype=np.uint8))
    assert error_for(wrong_labels, 'train-labels-idx1-ubyte').endswith(
        "train-labels-idx1-ubyte' holds labels from 12 to 12; fashion_mnist has the classes 0 to 9"
    )
    assert error_for(idx_bytes(np.zeros(150, dtype=np.uint8)), 'train-labels-idx1-ubyte') == (
        f"error: '{images}' holds 200 images but '{folder / 'train-labels-idx1-ubyte'}' 150 labels: "
        'they are not one split'
    )
    assert error_for(idx_bytes(np.zeros((200, 32, 32), dtype=np.uint8))) == (
        f"error: '{images}' holds images of 32x32 pixels; fashion_mnist has 28x28"
    )
    # gzipped: a cut-off archive, or a file that is not gzip at all
    gz_folder = tmp_path / 'badgz'
    write_idx_folder(gz_folder)
    archive = gz_folder / 't10k-images-idx3-ubyte.gz'
    archive.write_bytes(archive.read_bytes()[:-500])
    with pytest.raises(DatasetFileError, match=r"t10k-images-idx3-ubyte.gz' is not a readable gzip file \(EOFError"):
        build_classification_data('fashion_mnist', data_dir=str(gz_folder), download=False)
    archive.write_bytes(b'not gzip at all')
    with pytest.raises(DatasetFileError, match=r'is not a readable gzip file \(BadGzipFile'):
        build_classification_data('fashion_mnist', data_dir=str(gz_folder), download=False)


def test_torchvision_downloads_what_is_missing_and_a_failed_download_is_named(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def download(root, train, download):  # as torchvision does: the files unpacked into <root>/FashionMNIST/raw
        calls.append((root, download))
        write_idx_folder(Path(root) / 'FashionMNIST' / 'raw', gz=False)

    monkeypatch.setattr(torchvision.datasets, 'FashionMNIST', download)
    train, _, _ = build_classification_data('fashion_mnist', data_dir=str(tmp_path / 'data'), download=True)
    assert len(train) == 200 and calls == [(str(tmp_path / 'data'), True)]
    build_classification_data('fashion_mnist', data_dir=str(tmp_path / 'data'), download=True)
    assert len(calls) == 1  # found on disk the second time

    def offline(root, train, download):
        (Path(root) / 'FashionMNIST' / 'raw').mkdir(parents=True)
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(torchvision.datasets, 'FashionMNIST', offline)
    with pytest.raises(DatasetNotFoundError, match=r'The download failed \(URLError: <urlopen error no network>\)'):
        build_classification_data('fashion_mnist', data_dir=str(tmp_path / 'fresh'), download=True)
    assert not (tmp_path / 'fresh').exists()  # no empty folders left behind


def test_train_subset_is_stratified_fixed_by_split_seed_and_validation_stays_whole(fashion_dir):
    def subset(seed, size=100):
        return build_classification_data(
            'fashion_mnist', data_dir=str(fashion_dir), download=False, train_subset=size, split_seed=seed
        )

    train, val, _ = subset(0)
    assert len(train) == 100 and np.bincount(train.labels).tolist() == [10] * 10 and len(val) == 50
    full = build_classification_data('fashion_mnist', data_dir=str(fashion_dir), download=False)[0]
    np.testing.assert_array_equal(train.images, full.images[train.indices])  # indices point into the full split
    assert np.array_equal(train.indices, subset(0)[0].indices)
    assert not np.array_equal(train.indices, subset(1)[0].indices)
    # pixel_mean takes its statistics from the images it trains on
    centred = build_classification_data(
        'fashion_mnist', data_dir=str(fashion_dir), download=False, train_subset=100, input_norm='pixel_mean'
    )[0]
    torch.testing.assert_close(centred.offset, train.images.mean(0))
    assert len(subset(0, 200)[0]) == 200
    for size in (5, 201):
        with pytest.raises(
            ValueError, match=rf'train_subset must be between 10 \(one image per class\) and 200 .*got {size}'
        ):
            subset(0, size)
    with pytest.raises(ConfigError, match=r'"train_subset".* PositiveInt: .*restriction v>0 .*Given value: 0$'):
        ClassificationConfig(train_subset=0)


def test_every_arm_and_repeat_trains_on_the_same_subset(fashion_dir):
    config = CompareConfig(
        dataset='fashion_mnist', data_dir=str(fashion_dir), train_subset=50, kernel_sizes=[7], repeats=3
    )
    runs = [run_config(config, arm, 7, repeat) for arm in ('CONV', 'ACONV') for repeat in range(3)]
    assert {run.split_seed for run in runs} == {0} and [run.seed for run in runs] == [0, 1, 2] * 2
    first = build_data(runs[0])[0].indices
    assert all(np.array_equal(build_data(run)[0].indices, first) for run in runs[1:])
    other = CompareConfig(dataset='fashion_mnist', train_subset=50, split_seed=3, kernel_sizes=[7], repeats=2)
    assert run_config(other, 'CONV', 7, 1).split_seed == 3
    assert run_config(CompareConfig(dataset='fashion_mnist', kernel_sizes=[7]), 'CONV', 7, 1).split_seed == 0


def test_the_low_data_config_holds_its_settings_and_runs_end_to_end(fashion_dir, tmp_path, capsys):
    config = parse_config(CompareConfig, ['--config', 'simple_cnn_fashion_mnist_lowdata'])
    assert (config.kernel_sizes, config.repeats, config.dataset) == ([7], 5, 'fashion_mnist')
    assert (config.train_subset, config.split_seed, config.epochs, config.batch_size) == (6000, 0, 40, 64)
    assert (config.lr, config.scheduler, config.input_norm, config.num_threads) == (0.01, 'plateau', 'pixel_mean', 2)
    assert config.baseline_model == 'conv_simple_cnn'
    # the same path as the long run, on a small idx folder
    load_recipe('compare').main(
        [
            '--config',
            'simple_cnn_fashion_mnist_lowdata',
            '--data_dir',
            str(fashion_dir),
            '--download',
            'false',
            '--train_subset',
            '60',
            '--repeats',
            '2',
            '--epochs',
            '2',
            '--max_steps_per_epoch',
            '2',
            '--save_every',
            '0',
            '--output_dir',
            str(tmp_path),
            *FAST,
        ]
    )
    output = capsys.readouterr().out
    assert '| 7×7 (best) |' in output and '### Learned kernel sizes of the ACONV arm (crop_tol=0.001)' in output
    settings = yaml.safe_load((tmp_path / 'settings.yaml').read_text())
    assert settings['runs_common']['train_subset'] == 60 and settings['runs_common']['split_seed'] == 0
    history = json.loads((tmp_path / 'aconv_k7' / 'seed1' / 'metrics.json').read_text())
    assert [record['val_samples'] for record in history] == [50, 50]  # the whole test split
    sizes = json.loads((tmp_path / 'learned_sizes.json').read_text())
    assert sorted(sizes['runs']['7']) == ['seed0', 'seed1'] and sizes['crop_tol'] == 1e-3
    layers = sizes['runs']['7']['seed0']
    assert sorted(layers) == ['conv1', 'conv2'] and all(len(layer['sizes']) == 32 for layer in layers.values())
    table = (tmp_path / 'learned_sizes.md').read_text()
    assert '| 7×7 | conv1 |' in table and '| 7×7 | conv2 |' in table
    assert (tmp_path / 'comparison_curves.png').stat().st_size > 0


def gpu_script(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    return subprocess.run(
        [sys.executable, str(ROOT / 'benchmarks' / 'fashion_full.py'), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_the_full_length_gpu_script_runs_its_comparison_on_a_cpu_in_a_tiny_setting(fashion_dir, tmp_path):
    tiny = ['--data_dir', str(fashion_dir), '--output_dir', str(tmp_path), '--repeats', '2', '--parallel', '2']
    tiny += ['--epochs', '2', '--max_steps_per_epoch', '2', '--batch_size', '16', '--val_batch_size', '50', '--cpu']
    completed = gpu_script(*tiny)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.startswith('4 runs (2 epochs each), 0 finished before, 2 at once on CPU')
    assert '| 7×7 (best) |' in completed.stdout and 'paper, Table 2' in completed.stdout
    summary = json.loads((tmp_path / 'fashion_full.json').read_text())
    assert summary['complete'] and summary['epochs'] == 2 and not summary['failed']
    assert summary['epochs_per_run'] == {'conv_seed0': 2, 'conv_seed1': 2, 'aconv_seed0': 2, 'aconv_seed1': 2}
    for name in ('comparison.md', 'comparison_curves.png', 'learned_sizes.md', 'fashion_full.md'):
        assert (tmp_path / name).is_file(), name
    run = yaml.safe_load((tmp_path / 'run_configs' / 'aconv_k7_seed1.yaml').read_text())
    assert (run['model'], run['kernel_size'], run['seed'], run['lr'], run['compile']) == (
        'aconv_simple_cnn',
        7,
        1,
        0.01,
        False,
    )
    again = gpu_script(*tiny)  # finished runs are read back, not trained again
    assert again.returncode == 0 and again.stdout.startswith('4 runs (2 epochs each), 4 finished before')


def test_the_gpu_script_tables_the_epochs_every_run_finished_when_time_runs_out(fashion_dir, tmp_path):
    spec = importlib.util.spec_from_file_location('fashion_full', ROOT / 'benchmarks' / 'fashion_full.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    config = CompareConfig(dataset='fashion_mnist', kernel_sizes=[7], repeats=2, epochs=4)

    def history(*accuracies):
        return [dict(val_accuracy=value) for value in accuracies]

    histories = dict(
        CONV={0: history(0.5, 0.7, 0.9), 1: history(0.6, 0.8, 0.9, 0.95)},
        ACONV={0: history(0.5, 0.9), 1: history(0.6, 0.7, 0.99, 0.99)},
    )
    markdown, epochs = script.prefix_comparison(config, histories)  # the peaks of the first 2 epochs
    assert epochs == 2 and 'the first 2 of 4 epochs' in markdown
    assert '| 7×7 (best) | 75.00±7.07 | 80.00 | 80.00±14.14 | 90.00 |' in markdown
    none = dict(CONV={0: [], 1: history(0.5)}, ACONV={0: history(0.5), 1: history(0.6)})
    assert script.prefix_comparison(config, none) == (None, 0)
    # a real stop: one run at a time, stopped after a few seconds
    stopped = gpu_script(
        '--data_dir', str(fashion_dir), '--output_dir', str(tmp_path), '--repeats', '2', '--parallel', '1',
        '--epochs', '500', '--batch_size', '16', '--cpu', '--time_limit', '4',
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    summary = json.loads((tmp_path / 'fashion_full.json').read_text())
    assert summary['stopped_at_time_limit'] and not summary['complete'] and not summary['failed']
    assert 'stopped at the time limit after 0 of 500 epochs' in stopped.stdout


@pytest.mark.skipif(
    not all((DEBIAN / f'{stem}.gz').is_file() for stem in STEMS),
    reason=f'the real Fashion-MNIST files are not in {DEBIAN}: apt-get install dataset-fashion-mnist '
    '(as root; .ci/run does it where apt-get is available) could not run here',
)
def test_the_real_files_of_debians_package_load_and_train(tmp_path):
    config = parse_config(
        ClassificationConfig, ['--config', 'simple_cnn_fashion_mnist', '--data_dir', str(DEBIAN), '--download', 'false']
    )
    train, val, info = build_data(config)
    assert (len(train), len(val), info.img_size) == (60000, 10000, (28, 28))
    assert np.bincount(train.labels).tolist() == [6000] * 10 and np.bincount(val.labels).tolist() == [1000] * 10
    assert float(train.images.mean()) == pytest.approx(0.286, abs=5e-4)  # the known pixel mean of the training split
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    load_recipe('train_classification').main(
        [
            '--config',
            'simple_cnn_fashion_mnist',
            '--kernel_size',
            '3',  # the cheapest of the paper's sizes: the test is about the files
            '--data_dir',
            str(DEBIAN),
            '--download',
            'false',
            '--epochs',
            '1',
            '--max_steps_per_epoch',
            '3',
            '--val_batch_size',
            '1000',
            '--save_every',
            '0',
            '--plots',
            'false',
            '--output_dir',
            str(tmp_path),
            *FAST,
        ]
    )
    history = json.loads((tmp_path / 'metrics.json').read_text())
    assert history[0]['step'] == 3 and history[0]['val_samples'] == 10000 and 0.0 < history[0]['val_accuracy'] <= 1.0


def test_epoch_time_prints_each_epochs_wall_time(fashion_dir, tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / 'benchmarks' / 'epoch_time.py'),
            '--config',
            str(ROOT / 'recipes/configs/simple_cnn_fashion_mnist.yaml'),
            '--data_dir',
            str(fashion_dir),
            '--train_subset',
            '40',
            '--batch_size',
            '16',
            '--epochs',
            '2',
            '--output_dir',
            str(tmp_path),
            *FAST,
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert [line.split(' wall ')[0] for line in lines if ' wall ' in line] == ['epoch 1', 'epoch 2']
    assert lines[-1].startswith('total ') and lines[-1].endswith(' s (imports excluded)')
