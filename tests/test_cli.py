"""The command line: one-line errors with exit status 2, launcher and output-folder traps, --help,
--print_config, the per-epoch line, thread pinning"""

import dataclasses
import json
import os
import re
import runpy
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

import timm_aconv
from timm_aconv.engine import ConfigError, parse_config, run_cli
from timm_aconv.engine.config import build_parser
from timm_aconv.engine.history import epoch_line
from timm_aconv.engine.launch import check_process_count, expected_process_count
from timm_aconv.engine.output_dir import check_output_dir
from timm_aconv.experiments.classification import ClassificationConfig, create_classifier
from timm_aconv.experiments.compare import CompareConfig
from timm_aconv.experiments.datasets import DataInfo
from timm_aconv.experiments.filters import LearnFiltersConfig
from timm_aconv.experiments.segmentation import SegmentationConfig
from timm_aconv.experiments.size_budget_sweep import SizeBudgetConfig

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / 'recipes' / 'configs' / 'digits.yaml')
QUIET = ['--log_with', 'none', '--num_threads', '1']
RECIPES = dict(
    train_classification=ClassificationConfig,
    compare=CompareConfig,
    learn_filters=LearnFiltersConfig,
    train_segmentation=SegmentationConfig,
    size_budget=SizeBudgetConfig,
)

pytestmark = pytest.mark.usefixtures('one_torch_thread')


def recipe_main(name: str):
    return runpy.run_path(str(ROOT / 'recipes' / f'{name}.py'))['main']


def cli_error(main, argv, capsys) -> str:
    """The one stderr line of ``main(argv)`` run as the recipes run it; exit status 2 asserted."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(partial(main, argv))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), lines
    return lines[0]


def option_help(text: str) -> dict:
    """``--help`` output as {'--key': 'the option's lines joined'}."""
    options, current = {}, None
    for line in text.splitlines():
        if line.startswith('  --'):
            current = line.split()[0]
            options[current] = line.strip()
        elif current is not None and line.startswith('   '):
            options[current] += ' ' + line.strip()
        else:
            current = None
    return options


def run_command(args, tmp_path, **env):
    environment = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', **env)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment
    )


# ---- through the command line (a real python process each)


def test_segmentation_missing_dataset_is_one_line_not_three_tracebacks(tmp_path):
    completed = run_command(
        [
            str(ROOT / 'recipes' / 'train_segmentation.py'),
            '--dataset',
            'oxford_pets',
            '--data_dir',
            str(tmp_path / 'nowhere'),
            '--download',
            'false',
            *QUIET,
        ],
        tmp_path,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.splitlines() == [completed.stderr.strip()] and 'Traceback' not in completed.stderr
    assert completed.stderr.startswith("error: dataset 'oxford_pets' was not found in ")
    assert 'annotations.tar.gz' in completed.stderr


def test_torchrun_without_cpu_stops_each_process_with_what_to_add(tmp_path):
    # what every process of `torchrun --nproc_per_node 2` sees; without --cpu Accelerate runs it alone
    torchrun = dict(
        WORLD_SIZE='2', RANK='0', LOCAL_RANK='0', LOCAL_WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='29555'
    )
    completed = run_command(
        [
            str(ROOT / 'recipes' / 'train_classification.py'),
            '--config',
            DIGITS,
            '--epochs',
            '1',
            '--output_dir',
            'run',
            *QUIET,
        ],
        tmp_path,
        **torchrun,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.strip() == (
        'error: the launcher started 2 processes (WORLD_SIZE=2) but Accelerate found no GPU for them and runs each '
        'on its own: add --cpu to train with 2 processes on CPU, or launch one process'
    )
    assert not (tmp_path / 'run').exists()  # stopped before writing anything


def test_demo_module_errors_are_one_line(tmp_path):
    failed = run_command(['-m', 'timm_aconv.demo', '--kernel_sizes', '4'], tmp_path)
    assert (failed.returncode, failed.stderr) == (2, 'error: kernel_sizes must be odd integers >= 3, got [4]\n')


def test_demo_help_names_the_command_and_shows_the_demos_values(capsys, monkeypatch):
    from timm_aconv import demo

    monkeypatch.setenv('COLUMNS', '250')
    monkeypatch.setattr(sys, 'argv', [demo.__file__])  # what python -m sets
    with pytest.raises(SystemExit) as exit_info:
        demo.main(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith('usage: python -m timm_aconv.demo [--config FILE] [--KEY VALUE ...]\n')
    assert re.search(r'--repeats REPEATS +training runs per arm .* default: 3\)', text)  # the demo's value
    assert '``' not in text and '::' not in text


# ---- the same entry points in this process (run_cli around each recipe's main)


def test_bad_layer_settings_are_one_line_errors_in_every_recipe(capsys):
    classification, segmentation = recipe_main('train_classification'), recipe_main('train_segmentation')
    assert cli_error(classification, ['--config', DIGITS, '--kernel_size', '4'], capsys) == (
        'error: kernel_size must be an odd integer >= 3 (3, 5, 7, 9, ...), got 4'
    )
    assert cli_error(classification, ['--config', DIGITS, '--sigma_init', '5,1'], capsys) == (
        'error: sigma_init must be (low, high) with low <= high, got (5.0, 1.0)'
    )
    assert cli_error(recipe_main('compare'), ['--sigma_init', '5,1'], capsys).startswith('error: sigma_init must be')
    assert cli_error(segmentation, ['--sigma_init', '5,1'], capsys) == (
        'error: sigma_init must be (low, high) with low <= high, got (5.0, 1.0)'
    )
    assert cli_error(segmentation, ['--sigma_bounds', '2,1'], capsys).startswith('error: sigma_bounds must satisfy')
    assert cli_error(recipe_main('learn_filters'), ['--kernel_size', '4'], capsys).startswith(
        'error: kernel_size must be an odd integer'
    )
    assert cli_error(classification, ['--epochs'], capsys) == 'error: argument --epochs: expected one argument'
    assert cli_error(classification, ['--epoch', '3'], capsys) == "error: unknown key 'epoch'; did you mean epochs?"
    assert cli_error(classification, ['--optimizer', 'lion'], capsys) == (
        "error: Parser key \"optimizer\": Expected a typing.Literal['sgd', 'adam', 'adamw']. Got value: lion"
    )
    assert cli_error(classification, ['--augment_shift', '1'], capsys) == (
        'error: Parser key "augment_shift": Not of type RightOpenUnitInterval: 1 does not conform to restriction '
        'v>=0 and v<1'
    )


def test_model_arguments_name_the_key_to_drop_or_convert(capsys):
    classification = recipe_main('train_classification')
    assert cli_error(classification, ['--config', DIGITS, '--model', 'resnet18', *QUIET], capsys) == (
        "error: model 'resnet18' does not take kernel_size=7: drop kernel_size from the config (--kernel_size null "
        'on the command line) or add --convert to make its convolutions adaptive'
    )
    message = cli_error(classification, ['--model', 'resnet18', '--model_kwargs', '{bogus: 1}', *QUIET], capsys)
    assert message == "error: model 'resnet18' does not take 'bogus': remove it from model_kwargs"


def test_conversion_advice_is_the_recipes_own_option(capsys):
    message = cli_error(
        recipe_main('train_classification'),
        ['--model', 'convnext_atto', '--convert', '--dataset', 'synthetic', *QUIET],
        capsys,
    )
    assert message.startswith("error: --convert of 'convnext_atto': layer 'stem.0' has a 4-wide kernel")
    assert 'Exclude it with --convert_exclude stem.0.' in message and 'exclude=[' not in message
    # following the advice works
    config = parse_config(
        ClassificationConfig,
        ['--model', 'convnext_atto', '--convert', '--convert_exclude', 'stem.0,stages.*.downsample.*'],
    )
    model = create_classifier(config, DataInfo('synthetic', 4, 1, (32, 32)))
    assert type(model.stem[0]) is torch.nn.Conv2d and len(list(timm_aconv.adaptive_layers(model))) == 12
    assert parse_config(ClassificationConfig, ['--convert_exclude', 'stem.0']).convert_exclude == [
        'stem.0'
    ]  # as advised
    assert parse_config(ClassificationConfig, ['--convert_exclude=[stem.0, head]']).convert_exclude == [
        'stem.0',
        'head',
    ]
    config = parse_config(ClassificationConfig, ['--model', 'resnet18', '--convert', '--convert_include', 'layer1.*'])
    names = [
        name for name, _ in timm_aconv.named_adaptive_layers(create_classifier(config, DataInfo('s', 4, 1, (32, 32))))
    ]
    assert names and all(name.startswith('layer1.') for name in names)


def test_missing_classification_dataset_is_one_line(tmp_path, capsys):
    message = cli_error(
        recipe_main('train_classification'),
        ['--dataset', 'cifar10', '--data_dir', str(tmp_path), '--download', 'false', *QUIET],
        capsys,
    )
    assert message.startswith(f"error: dataset 'cifar10' was not found in '{tmp_path}'")


# ---- a second run into an output folder


def test_check_output_dir_refuses_a_folder_holding_a_run_unless_told(tmp_path):
    check_output_dir(str(tmp_path / 'new'))  # missing: fine
    check_output_dir(str(tmp_path))  # empty: fine
    (tmp_path / 'metrics.json').write_text('[]')
    (tmp_path / 'checkpoint').mkdir()
    with pytest.raises(ConfigError) as error:
        check_output_dir(str(tmp_path))
    assert str(error.value) == (
        f"output_dir '{tmp_path}' already holds a run (checkpoint/, metrics.json): add "
        f'--resume to continue it, --overwrite to replace it, or choose another --output_dir'
    )
    check_output_dir(str(tmp_path), resume=True)
    check_output_dir(str(tmp_path), overwrite=True)


def test_second_run_is_refused_resume_continues_and_piped_logs_get_one_line_per_epoch(tmp_path, capsys):
    classification = recipe_main('train_classification')
    argv = [
        '--config',
        DIGITS,
        '--img_size',
        '8',
        '--epochs',
        '1',
        '--max_steps_per_epoch',
        '3',
        '--output_dir',
        str(tmp_path),
        *QUIET,
    ]  # progress bar on (the default), stderr not a terminal
    classification(argv)
    captured = capsys.readouterr()
    assert re.fullmatch(
        r'epoch 1/1  train_loss \d\.\d{4}  val_loss \d\.\d{4} \(best \d\.\d{4}\)  val_accuracy '
        r'\d\.\d{4}  lr 0\.01  sigma \[0\.\d{3}, 0\.\d{3}\]',
        captured.out.splitlines()[0],
    )
    assert 'it/s' not in captured.err and '%|' not in captured.err  # no progress bar in a piped log
    message = cli_error(classification, [*argv[: -len(QUIET)], '--epochs', '2', *QUIET], capsys)
    assert message.startswith(f"error: output_dir '{tmp_path}' already holds a run (") and '--resume' in message
    assert len(json.loads((tmp_path / 'metrics.json').read_text())) == 1  # untouched
    classification([*argv, '--epochs', '2', '--resume'])
    assert capsys.readouterr().out.startswith('epoch 2/2  train_loss')
    assert [row['epoch'] for row in json.loads((tmp_path / 'metrics.json').read_text())] == [1, 2]


def test_refusal_covers_every_recipe_before_it_does_any_work(tmp_path, capsys):
    (tmp_path / 'results.json').write_text('{}')
    expected = f"error: output_dir '{tmp_path}' already holds a run (results.json): add --resume"
    for name in RECIPES:
        assert cli_error(recipe_main(name), ['--output_dir', str(tmp_path)], capsys).startswith(expected), name


# ---- launchers


def test_launcher_asking_for_more_processes_than_accelerate_runs_is_an_error(monkeypatch):
    for name in ('WORLD_SIZE', 'ACCELERATE_USE_CPU', 'MASTER_PORT', 'PMI_SIZE', 'OMPI_COMM_WORLD_SIZE'):
        monkeypatch.delenv(name, raising=False)
    check_process_count(1)  # plain python
    assert expected_process_count(cpu=False) == expected_process_count(cpu=True) == 1
    monkeypatch.setenv('WORLD_SIZE', '2')
    assert expected_process_count(cpu=True) == 2  # torchrun ... --cpu: gloo
    assert expected_process_count(cpu=False) == (2 if torch.accelerator.is_available() else 1)
    check_process_count(2)
    with pytest.raises(ConfigError, match=r'started 2 processes .* add --cpu'):
        check_process_count(1)
    monkeypatch.setenv('WORLD_SIZE', '1')
    check_process_count(1)  # torchrun --nproc_per_node 1
    monkeypatch.delenv('WORLD_SIZE')
    # accelerate launch [--cpu] --num_processes 2 (no --multi_gpu): MASTER_PORT set, one process started
    monkeypatch.setenv('ACCELERATE_USE_CPU', 'True')
    check_process_count(1)  # accelerate launch --cpu: one process asked for
    monkeypatch.setenv('MASTER_PORT', '29500')
    with pytest.raises(ConfigError) as error:
        check_process_count(1)
    assert str(error.value) == (
        'accelerate launch --num_processes N without --multi_gpu started a single process (its simple launcher '
        'cannot start several on CPU): for N processes on CPU run torchrun --standalone --nproc_per_node N '
        '<recipe> ... --cpu'
    )
    monkeypatch.setenv('PMI_SIZE', '2')
    check_process_count(1)  # accelerate launch --mpirun_hostfile: Accelerate's multi-CPU mode


# ---- help


@pytest.mark.parametrize('name', list(RECIPES))
def test_help_lists_every_key_with_type_default_and_help(name, capsys, monkeypatch):
    monkeypatch.setenv('COLUMNS', '250')
    monkeypatch.setattr(sys, 'argv', [f'recipes/{name}.py'])
    with pytest.raises(SystemExit) as exit_info:
        recipe_main(name)(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f'usage: python recipes/{name}.py [--config FILE] [--KEY VALUE ...]\n')
    assert '``' not in text and '::' not in text and ':mod:' not in text
    options = option_help(text)
    assert '--print_config' in options
    docstrings = {action.dest: ' '.join((action.help or '').split()) for action in build_parser(RECIPES[name])._actions}
    for field in dataclasses.fields(RECIPES[name]):
        line = options.get(f'--{field.name}')
        assert line is not None, field.name
        assert docstrings[field.name] and f'{docstrings[field.name]} (type: ' in line, line
        assert re.search(r'\(type: .+, default: .+\)$', line), line


def test_help_shows_allowed_values_types_and_bare_flags(capsys, monkeypatch):
    monkeypatch.setenv('COLUMNS', '250')
    with pytest.raises(SystemExit):
        parse_config(ClassificationConfig, ['--help'])
    lines = option_help(capsys.readouterr().out)
    assert lines['--optimizer'].split()[1] == '{sgd,adam,adamw}'
    assert lines['--kernel_size'].endswith('(type: Optional[int], default: null)')
    assert lines['--epochs'].endswith('training epochs (type: PositiveInt, default: 10)')  # the field's docstring
    assert lines['--sigma_init'].endswith('default: null)') and lines['--resume'].split()[1] == '[{true,false}]'


def test_every_config_field_of_every_recipe_has_a_help_line():
    missing = [
        (cls.__name__, action.dest)
        for cls in RECIPES.values()
        for action in build_parser(cls)._actions
        if action.dest in {field.name for field in dataclasses.fields(cls)} and not action.help
    ]
    assert not missing, f'add a docstring under these fields: {missing}'


@pytest.mark.parametrize('name', list(RECIPES))
def test_print_config_reads_back_to_the_same_settings(name, tmp_path, capsys):
    shipped = dict(
        train_classification='digits',
        compare='digits',
        learn_filters='learn_filters',
        train_segmentation='segmentation',
        size_budget='size_budget_digits',
    )
    argv = ['--config', shipped[name], '--seed', '3', '--output_dir', str(tmp_path / 'run'), '--plots', 'false']
    with pytest.raises(SystemExit) as exit_info:
        parse_config(RECIPES[name], [*argv, '--print_config'])
    assert exit_info.value.code == 0
    printed = tmp_path / 'printed.yaml'
    printed.write_text(capsys.readouterr().out)
    assert 'seed: 3\n' in printed.read_text()
    assert parse_config(RECIPES[name], ['--config', str(printed)]) == parse_config(RECIPES[name], argv)


# ---- the per-epoch line and threads


def test_epoch_line_shows_loss_monitor_metric_lr_and_sigma_range():
    model = torch.nn.Sequential(timm_aconv.AdaptiveConv2d(1, 3, 3, sigma_init=(0.2, 0.6)), torch.nn.Conv2d(3, 2, 1))
    record = dict(
        epoch=2,
        step=10,
        train_loss=0.51234,
        val_accuracy=0.9,
        val_loss=0.25,
        val_samples=360,
        lr_decay=0.01,
        lr_no_decay=0.01,
        lr_sigma=0.01,
        best_val_loss=0.2,
    )
    assert epoch_line(record, 5, 'val_loss', model) == (
        'epoch 2/5  train_loss 0.5123  val_loss 0.2500 (best 0.2000)  val_accuracy 0.9000  lr 0.01  '
        'sigma [0.200, 0.600]'
    )
    record.update(lr_sigma=0.001)
    assert epoch_line(record, 5, 'val_accuracy') == (
        'epoch 2/5  train_loss 0.5123  val_accuracy 0.9000 (best 0.9000)  '
        'val_loss 0.2500  lr_decay 0.01 lr_no_decay 0.01 lr_sigma 0.001'
    )


def test_learn_filters_pins_its_thread_count(tmp_path):
    torch.set_num_threads(2)
    recipe_main('learn_filters')(
        ['--iterations', '2', '--image_size', '16', '--plots', 'false', '--output_dir', str(tmp_path)]
    )
    assert torch.get_num_threads() == LearnFiltersConfig.num_threads == 1


def test_learn_filters_figure_keeps_every_title_inside(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from timm_aconv.experiments.filters import plot_learned_filters, run_learn_filters

    figure = plot_learned_filters(run_learn_filters(LearnFiltersConfig(iterations=2, image_size=16)))
    canvas = FigureCanvasAgg(figure)  # the package's figures have no pyplot canvas
    canvas.draw()
    renderer, bounds = canvas.get_renderer(), figure.bbox
    for axis in figure.axes:
        for text in (axis.title, axis.yaxis.label, axis.xaxis.label):
            if text.get_text():
                extent = text.get_window_extent(renderer)
                assert bounds.x0 <= extent.x0 and extent.x1 <= bounds.x1 + 0.5, text.get_text()
