"""The shared training engine: sigma clamp on real steps, resume, clipping, schedules, configs"""

import functools
import json
import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.utils.data import DataLoader, TensorDataset

import timm_aconv
import timm_aconv.layers.sigma as sigma_module
from timm_aconv.engine import (
    Callback,
    ClassificationMetric,
    ConfigError,
    EngineConfig,
    SigmaRecorder,
    Trainer,
    create_optimizer,
    latest_checkpoint,
    parse_config,
    set_seed,
)
from timm_aconv.engine.schedulers import GaussianOneCycle


@pytest.fixture(autouse=True)
def restore_deterministic_mode():
    """deterministic=True switches torch's global mode on; give the session its setting back."""
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class StopAfter(Callback):
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer, record) -> None:
        trainer.should_stop = trainer.epoch >= self.epochs


def tiny_model() -> nn.Module:
    return nn.Sequential(
        timm_aconv.AdaptiveConv2d(1, 4, 3, padding=1, bias=False, sigma_init=(0.1, 0.5)),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def tiny_loaders(train_samples: int = 48, val_samples: int = 21, batch_size: int = 8):
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(train_samples + val_samples, 1, 6, 6, generator=generator)
    labels = torch.randint(0, 3, (train_samples + val_samples,), generator=generator)
    train = TensorDataset(inputs[:train_samples], labels[:train_samples])
    val = TensorDataset(inputs[train_samples:], labels[train_samples:])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def make_trainer(tmp_path, **overrides) -> Trainer:
    settings = dict(output_dir=str(tmp_path), epochs=2, lr=0.5, progress=False, log_with='none', seed=3)
    settings.update(overrides)
    config = EngineConfig(**settings)
    set_seed(config.seed)
    train_loader, val_loader = tiny_loaders()
    return Trainer(tiny_model(), train_loader, val_loader, config, nn.CrossEntropyLoss(), ClassificationMetric())


def test_clamp_runs_only_on_real_optimizer_steps(tmp_path, monkeypatch):
    calls = []
    original = sigma_module.apply_clamps  # what clamp_sigmas_ and the post-step hook call
    monkeypatch.setattr(sigma_module, 'apply_clamps', lambda clamps: calls.append(1) or original(clamps))
    trainer = make_trainer(tmp_path, epochs=1, grad_accum_steps=2, save_every=0)
    # start outside the bounds [1/3, 3]: only a real step clamps it back
    trainer.unwrapped_model[0].sigma.data.fill_(10.0)
    trainer.fit()
    assert trainer.global_step == 3  # 6 batches / 2 accumulated
    assert len(calls) == 3
    sigma = trainer.unwrapped_model[0].sigma
    assert float(sigma.detach().min()) >= 1 / 3 and float(sigma.detach().max()) <= 3.0


def test_accumulation_tail_forces_a_step(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1, grad_accum_steps=4, save_every=0)  # 6 batches → steps after 4, 6
    trainer.fit()
    assert trainer.global_step == 2


def test_resume_matches_an_uninterrupted_run(tmp_path):
    settings = dict(epochs=4, scheduler='one_cycle', weight_decay=1e-3, deterministic=True)
    straight = make_trainer(tmp_path / 'straight', **settings)
    straight_history = straight.fit()

    interrupted = make_trainer(tmp_path / 'resumed', **settings)
    interrupted.callbacks.append(StopAfter(epochs=2))
    assert len(interrupted.fit()) == 2
    resumed = make_trainer(tmp_path / 'resumed', **settings, resume=True)
    resumed_history = resumed.fit()
    assert resumed_history == straight_history  # losses, accuracies, learning rates, all epochs
    for (name, expected), actual in zip(
        straight.unwrapped_model.state_dict().items(), resumed.unwrapped_model.state_dict().values()
    ):
        assert torch.equal(expected, actual), name
    saved = json.loads((tmp_path / 'resumed' / 'metrics.json').read_text())
    assert [record['epoch'] for record in saved] == [1, 2, 3, 4]


def test_resume_without_checkpoint_says_where_it_looked(tmp_path):
    trainer = make_trainer(tmp_path, resume=True)
    with pytest.raises(FileNotFoundError, match=r'no complete checkpoint in .*checkpoints'):
        trainer.fit()


def test_evaluation_counts_every_validation_sample_once(tmp_path):
    history = make_trainer(tmp_path, epochs=1, save_every=0).fit()
    assert history[0]['val_samples'] == 21  # 8 + 8 + 5
    assert (tmp_path / 'metrics.csv').read_text().splitlines()[0].startswith('epoch,step,train_loss,val_accuracy')


def test_gradient_clipping_by_value_bounds_each_update(tmp_path):
    trainer = make_trainer(
        tmp_path,
        epochs=1,
        max_steps_per_epoch=1,
        momentum=0.0,
        lr=1.0,
        clip_value=1e-3,
        save_every=0,
        scheduler='constant',
    )
    model = trainer.unwrapped_model
    before = {name: param.detach().clone() for name, param in model.named_parameters() if 'sigma' not in name}
    trainer.fit()
    # SGD with lr 1 moves each weight by its clipped gradient (sigma is also clamped into [1/n, n])
    steps = torch.cat([(model.get_parameter(name).detach() - old).abs().flatten() for name, old in before.items()])
    assert float(steps.max()) <= 1e-3 + 1e-7
    assert float(steps.max()) > 0


def test_optimizer_groups_keep_sigma_out_of_weight_decay():
    config = EngineConfig(weight_decay=0.1, sigma_lr_scale=0.2, lr=0.5)
    optimizer = create_optimizer(tiny_model(), config)
    groups = {group['name']: group for group in optimizer.param_groups}
    assert groups['sigma']['weight_decay'] == 0.0 and groups['sigma']['lr'] == pytest.approx(0.1)
    assert groups['decay']['weight_decay'] == 0.1 and groups['decay']['lr'] == 0.5


def test_gaussian_one_cycle_matches_the_paper_formula():
    schedule = GaussianOneCycle(total_steps=100, peak_lr=0.05, floor_lr=1e-4)
    for step in (0, 25, 50, 80):
        expected = 1e-4 + 0.05 * math.exp(-(((step - 50) / 25) ** 2))
        assert 0.05 * schedule(step) == pytest.approx(expected, rel=1e-12)


def test_plateau_scheduler_reduces_lr_by_factor(tmp_path):
    trainer = make_trainer(
        tmp_path,
        epochs=3,
        lr=1e-6,
        plateau_patience=0,
        plateau_cooldown=0,
        plateau_factor=0.5,
        min_lr=0.0,
        save_every=0,
        monitor='val_accuracy',
        monitor_mode='max',
    )
    history = trainer.fit()  # lr ~0: accuracy never improves after epoch 1
    # each row holds the lr its epoch trained with; epoch 2 is the first without improvement
    assert [record['lr_decay'] for record in history] == pytest.approx([1e-6, 1e-6, 5e-7], rel=1e-12)


def test_config_errors_name_the_key(tmp_path):
    config_file = tmp_path / 'bad.yaml'
    config_file.write_text('epochs: 3\nlearning_rate: 0.1\n')
    with pytest.raises(ConfigError, match=r"^unknown key 'learning_rate'"):
        parse_config(EngineConfig, ['--config', str(config_file)])
    with pytest.raises(
        ConfigError, match=r"\"scheduler\": Expected a typing.Literal\['constant', 'plateau', 'one_cycle'\]"
    ):
        parse_config(EngineConfig, ['--scheduler', 'cosine'])
    with pytest.raises(ConfigError, match=r'"epochs": Not of type PositiveInt: invalid literal .* \'2.5\''):
        parse_config(EngineConfig, ['--epochs', '2.5'])
    with pytest.raises(ConfigError, match=r"^unknown key 'optimiser'; did you mean optimizer\?$"):
        parse_config(EngineConfig, ['--optimiser', 'adam'])
    with pytest.raises(ConfigError, match=r'"lr": Not of type PositiveFloat: 0.0 does not conform to restriction v>0'):
        EngineConfig(lr=0.0)  # built in Python: the same check
    with pytest.raises(ConfigError, match='max_steps_per_epoch must be a positive multiple of grad_accum_steps'):
        parse_config(EngineConfig, ['--grad_accum_steps', '2', '--max_steps_per_epoch', '3'])
    config = parse_config(EngineConfig, ['--resume', '--lr=0.2'])
    assert config.resume is True and config.lr == 0.2


def test_monitor_must_be_a_metric(tmp_path):
    with pytest.raises(ConfigError, match="monitor='val_miou' is not a metric"):
        make_trainer(tmp_path, epochs=1, monitor='val_miou', save_every=0).fit()


def test_sigma_recorder_continues_after_resume(tmp_path):
    interrupted = make_trainer(tmp_path, epochs=3)
    interrupted.callbacks += [SigmaRecorder(), StopAfter(epochs=1)]
    interrupted.fit()
    resumed = make_trainer(tmp_path, epochs=3, resume=True)
    recorder = SigmaRecorder()
    resumed.callbacks.append(recorder)
    resumed.fit()
    saved = json.loads((tmp_path / 'sigmas.json').read_text())
    assert list(saved) == ['0'] and len(saved['0']) == 4  # initial + 3 epochs
    assert saved['0'][-1] == resumed.unwrapped_model[0].sigma.tolist()


class Killed(Exception):
    """Stands for the process dying (an OOM kill, a pre-empted node)."""


class CrashAfter(Callback):
    """A run killed after ``epochs`` epochs, before that epoch's checkpoint."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, trainer, record) -> None:
        if trainer.epoch == self.epochs:
            raise Killed


RESUME_SETTINGS = dict(epochs=4, scheduler='one_cycle', weight_decay=1e-3, deterministic=True)


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    """The reference run: its history, final weights and best weights."""
    directory = tmp_path_factory.mktemp('uninterrupted')
    # a module fixture runs before the function-scoped restore_deterministic_mode saves the mode: restore it here
    enabled, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    trainer = make_trainer(directory, **RESUME_SETTINGS)
    history = trainer.fit()
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    return history, trainer.unwrapped_model.state_dict(), load_file(directory / 'best' / 'model.safetensors')


def assert_same_run(directory, trainer, history, uninterrupted):
    expected_history, expected_weights, expected_best = uninterrupted
    assert history == expected_history
    for name, tensor in trainer.unwrapped_model.state_dict().items():
        assert torch.equal(tensor, expected_weights[name]), name
    best = load_file(directory / 'best' / 'model.safetensors')
    assert best.keys() == expected_best.keys() and all(torch.equal(best[name], expected_best[name]) for name in best)
    best_epoch = min(expected_history, key=lambda record: record['val_loss'])['epoch']  # first of equals
    assert json.loads((directory / 'best' / 'best.json').read_text())['epoch'] == best_epoch


def checkpoint_names(directory):
    return sorted(folder.name for folder in (directory / 'checkpoints').iterdir())


def test_run_killed_between_epochs_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    killed = make_trainer(tmp_path, **RESUME_SETTINGS)
    killed.callbacks.append(CrashAfter(epochs=3))
    with pytest.raises(Killed):
        killed.fit()
    assert checkpoint_names(tmp_path) == ['checkpoint_0', 'checkpoint_1']  # epochs 1 and 2; epoch 3 never saved
    resumed = make_trainer(tmp_path, **RESUME_SETTINGS, resume=True)
    assert_same_run(tmp_path, resumed, resumed.fit(), uninterrupted)
    # the last keep_checkpoints=2 remain, the newest holds the last epoch
    assert checkpoint_names(tmp_path) == ['checkpoint_2', 'checkpoint_3']
    assert json.loads((tmp_path / 'checkpoints' / 'checkpoint_3' / 'trainer_state.json').read_text())['epoch'] == 4


def test_run_killed_mid_save_resumes_from_the_newest_complete_checkpoint(tmp_path, uninterrupted, monkeypatch):
    killed = make_trainer(tmp_path, **RESUME_SETTINGS)
    save_state, saves = killed.accelerator.save_state, []

    def dies_during_the_third_save(*args, **kwargs):
        save_state(*args, **kwargs)
        saves.append(1)
        if len(saves) == 3:  # Accelerate's part written, the trainer's progress not yet
            raise Killed

    monkeypatch.setattr(killed.accelerator, 'save_state', dies_during_the_third_save)
    with pytest.raises(Killed):
        killed.fit()
    partial = tmp_path / 'checkpoints' / 'checkpoint_2'
    assert (partial / 'model.safetensors').is_file() and not (partial / 'trainer_state.json').exists()
    assert latest_checkpoint(str(tmp_path)) == tmp_path / 'checkpoints' / 'checkpoint_1'  # epoch 2
    resumed = make_trainer(tmp_path, **RESUME_SETTINGS, resume=True)
    assert_same_run(tmp_path, resumed, resumed.fit(), uninterrupted)
    assert checkpoint_names(tmp_path) == ['checkpoint_2', 'checkpoint_3']  # the partial one was replaced


def test_run_writes_its_config_and_a_fresh_run_starts_over(tmp_path):
    trainer = make_trainer(tmp_path, epochs=2, monitor='val_accuracy', monitor_mode='max', resume=False)
    trainer.fit()
    assert checkpoint_names(tmp_path) == ['checkpoint_0', 'checkpoint_1']
    # config.yaml holds every resolved field; --config on it gives the same config back (resume stored false)
    assert parse_config(EngineConfig, ['--config', str(tmp_path / 'config.yaml')]) == trainer.config
    again = make_trainer(tmp_path, epochs=1, save_best=False)  # not resumed: the earlier run's files go
    again.fit()
    assert checkpoint_names(tmp_path) == ['checkpoint_0']
    assert json.loads((tmp_path / 'checkpoints' / 'checkpoint_0' / 'trainer_state.json').read_text())['epoch'] == 1
    assert not (tmp_path / 'best').exists()
    with pytest.raises(
        ConfigError, match='"keep_checkpoints": Not of type AtLeastTwo: 1 does not conform to restriction v>=2'
    ):
        EngineConfig(keep_checkpoints=1)


class DynamoCounters(Callback):
    """Graphs compiled and graph breaks so far, at each epoch end."""

    def __init__(self) -> None:
        self.graphs, self.breaks = [], []

    def on_epoch_end(self, trainer, record) -> None:
        from torch._dynamo.utils import counters

        self.graphs.append(counters['stats']['unique_graphs'])
        self.breaks.append(sum(counters['graph_break'].values()))


def test_compiled_training_matches_eager_without_breaks_or_recompiles(tmp_path, monkeypatch, one_torch_thread):
    from torch._dynamo.utils import counters

    # the engine's model.compile() with a backend that builds no C++ (inductor takes minutes on 2 CPU cores)
    monkeypatch.setattr(torch, 'compile', functools.partial(torch.compile, backend='aot_eager'))
    # sigma starts below its bound 1/3: the clamp acts; lr 0.05: at 0.5 sigma's steps (gradients ~40) hit the
    # bounds, which turns float rounding into differences of 1e-3 within 9 steps
    settings = dict(epochs=3, deterministic=True, lr=0.05)
    assert make_trainer(tmp_path / 'auto', **settings)._should_compile() is False  # 'auto' on a CPU
    eager = make_trainer(tmp_path / 'eager', **settings, compile=False)
    assert eager.unwrapped_model[0]._kernel_group is not None  # the engine groups the model's layers
    eager_history = eager.fit()
    assert not eager.unwrapped_model._forward_pre_hooks

    torch._dynamo.reset()
    counters.clear()
    compiled = make_trainer(tmp_path / 'compiled', **settings, compile=True)
    recorder = DynamoCounters()
    compiled.callbacks += [recorder, StopAfter(epochs=2)]
    compiled_history = compiled.fit()
    assert recorder.breaks == [0, 0]
    assert recorder.graphs[0] >= 2 and recorder.graphs[1] == recorder.graphs[0]  # train + eval, no recompiles
    torch._dynamo.reset()  # as in a new process: the resumed run compiles what the first epoch compiled, no more
    counters.clear()
    resumed = make_trainer(tmp_path / 'compiled', **settings, compile=True, resume=True)
    resumed_history = resumed.fit()
    assert counters['stats']['unique_graphs'] == recorder.graphs[0] and not counters['graph_break']

    assert len(compiled_history) == 2 and len(resumed_history) == 3
    for actual, expected in zip(resumed_history, eager_history):
        assert actual.keys() == expected.keys()
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6)
    reference = eager.unwrapped_model.state_dict()
    state = resumed.unwrapped_model.state_dict()
    assert state.keys() == reference.keys()  # the checkpoint names of the eager model
    # compiled, the kernel's gradient comes from autograd through the envelope's formula, eager from its closed
    # form: equal to float rounding per step, which 9 steps grow to ~1e-6
    for name, tensor in state.items():
        torch.testing.assert_close(
            tensor, reference[name], rtol=1e-4, atol=1e-5, msg=lambda message, name=name: f'{name}: {message}'
        )
    assert float(resumed.unwrapped_model[0].sigma.detach().min()) >= 1 / 3 - 1e-7


def test_compile_setting_is_checked():
    assert parse_config(EngineConfig, ['--compile', 'true']).compile is True
    assert parse_config(EngineConfig, ['--compile', 'auto']).compile == 'auto'
    assert parse_config(EngineConfig, ['--compile', 'no']).compile is False  # YAML's booleans
    with pytest.raises(ConfigError, match=r'"compile": Does not validate .* Given value: fast'):
        EngineConfig(compile='fast')
    assert parse_config(EngineConfig, ['--compile_mode', 'reduce-overhead']).compile_mode == 'reduce-overhead'
    with pytest.raises(
        ConfigError,
        match=r'"compile_mode": .*\'default\', \'reduce-overhead\', \'max-autotune\', '
        r"'max-autotune-no-cudagraphs'.* Given value: fast",
    ):
        EngineConfig(compile_mode='fast')


def test_compile_mode_reaches_torch_compile(tmp_path, monkeypatch):
    modes = []
    monkeypatch.setattr(nn.Module, 'compile', lambda self, **kwargs: modes.append(kwargs))
    make_trainer(tmp_path / 'a', compile=True, compile_mode='reduce-overhead')
    make_trainer(tmp_path / 'b', compile=True)
    assert modes == [dict(mode='reduce-overhead'), {}]
