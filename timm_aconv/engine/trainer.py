"""The training loop shared by every recipe: :class:`Trainer` (Accelerate)

One loop for any task whose batches are ``(inputs, targets)`` (or a ``forward_fn``): Accelerate
prepares model, optimizer and loaders (CPU, one or many GPUs, ``accelerate launch`` or ``torchrun``;
multi-process CPU runs need ``cpu=True``). Per real optimizer step: clip by value (the paper's Keras
``clipvalue``, sigma too) and/or norm, the optimizer over :func:`timm_aconv.param_groups`, the sigma
clamp (:func:`timm_aconv.register_sigma_clamp`), a per-step scheduler; an optional kernel-size budget
adds ``size_budget_weight * timm_aconv.size_penalty(model, size_budget)`` to the loss, and
``train_crop_tol`` trains each adaptive layer at its learned window (:mod:`timm_aconv.layers.train_crop`). Per epoch:
evaluation through a :class:`~timm_aconv.engine.metrics.Metric` with ``gather_for_metrics`` (each
validation sample once on any number of processes), a metrics row (``metrics.csv``/``.json``,
trackers, one printed line), the best model by ``monitor`` in ``output_dir/best``, and Accelerate
checkpoints in ``output_dir/checkpoints`` (the last ``keep_checkpoints``, :mod:`~timm_aconv.engine.output_dir`;
``resume`` continues from the newest complete one with identical results). ``compile='auto'``
compiles the model in place on CUDA devices (``compile_mode``: torch.compile's mode, e.g.
``reduce-overhead`` for CUDA graphs); the model's adaptive layers are grouped
(:func:`timm_aconv.group_adaptive_layers`), so that a training step computes their product kernels
together, eager or compiled. Its settings: :class:`~timm_aconv.engine.engine_config.EngineConfig`.
"""

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DynamoBackend, ProjectConfiguration, set_seed
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from ..layers import OutputPixelTracker, size_penalty
from .adaptive_setup import prepare_adaptive_layers, resolve_trackers, tracker_config
from .callbacks import Callback
from .config import ConfigError, save_config
from .engine_config import EngineConfig, create_optimizer
from .history import epoch_line, write_history
from .launch import check_process_count, expected_process_count
from .metrics import Metric
from .output_dir import CHECKPOINT_NAME, TRAINER_STATE, checkpoint_folders, latest_checkpoint
from .schedulers import create_scheduler

__all__ = ['Trainer', 'set_seed']

ForwardFn = Callable[[nn.Module, Any], Tuple[torch.Tensor, torch.Tensor]]
SaveModelFn = Callable[[nn.Module, Path], None]


def _default_forward(model: nn.Module, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = batch
    return model(inputs), targets


class Trainer:
    """Trains ``model`` on ``train_loader``, evaluating on ``val_loader`` after every epoch.

    Args:
        model: any module; adaptive layers in it get the sigma clamp and sigma param group.
        train_loader: a ``DataLoader`` (shuffle it; Accelerate shards it across processes).
        val_loader: a ``DataLoader`` (not shuffled).
        config: an :class:`EngineConfig` (or a subclass).
        loss_fn: ``loss_fn(outputs, targets)`` → scalar loss.
        metric: a :class:`~timm_aconv.engine.metrics.Metric` for evaluation.
        callbacks: :class:`~timm_aconv.engine.callbacks.Callback` instances.
        forward_fn: ``forward_fn(model, batch) -> (outputs, targets)``; default unpacks
            ``(inputs, targets)`` and calls ``model(inputs)``.
        optimizer: an optimizer over ``model``'s parameters; default :func:`create_optimizer`.
        accelerator: an existing Accelerator; default one built from ``config``. Checkpoints go to
            ``<its project_dir>/checkpoints`` (automatic naming and ``keep_checkpoints`` are set on it).
        save_model_fn: ``save_model_fn(model, directory)`` writes the trained (unwrapped) model into
            ``directory``: the final model into ``output_dir``, the best into ``output_dir/best``;
            default: its weights as ``model.safetensors`` (``accelerator.save_model``). Runs on the
            main process only.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: torch.utils.data.DataLoader,
        val_loader: torch.utils.data.DataLoader,
        config: EngineConfig,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        metric: Metric,
        callbacks: Sequence[Callback] = (),
        forward_fn: ForwardFn = _default_forward,
        optimizer: Optional[torch.optim.Optimizer] = None,
        accelerator: Optional[Accelerator] = None,
        save_model_fn: Optional[SaveModelFn] = None,
    ) -> None:
        self.config = config
        self.loss_fn = loss_fn
        self.metric = metric
        self.callbacks = list(callbacks)
        self.forward_fn = forward_fn
        self.save_model_fn = save_model_fn or self._save_weights
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)  # small CPU models: 1 thread avoids spin-wait overhead
        if accelerator is None:
            check_process_count(expected_process_count(config.cpu))
        self.accelerator = accelerator or Accelerator(
            cpu=config.cpu,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.grad_accum_steps,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
            log_with=resolve_trackers(config.log_with),
            project_config=ProjectConfiguration(project_dir=config.output_dir),
        )
        project = self.accelerator.project_configuration  # checkpoints/checkpoint_<n>, the last N kept
        project.automatic_checkpoint_naming, project.total_limit = True, config.keep_checkpoints
        if project.project_dir is None:
            project.set_directories(config.output_dir)
        check_process_count(self.accelerator.num_processes)
        optimizer = optimizer or create_optimizer(model, config)
        self.clamp_handle = prepare_adaptive_layers(model, optimizer, config)  # before compiling
        if self._should_compile():
            # in place: same parameters, state-dict keys and checkpoints as eager
            model.compile(**({} if self.config.compile_mode is None else dict(mode=self.config.compile_mode)))
        # per adaptive layer, for the size budget's FLOPs weights
        self.output_pixels = OutputPixelTracker(model) if config.size_budget is not None else None
        self.model, self.optimizer, self.train_loader, self.val_loader = self.accelerator.prepare(
            model, optimizer, train_loader, val_loader
        )
        self.steps_per_epoch = self._optimizer_steps_per_epoch()
        self.scheduler = create_scheduler(
            config.scheduler,
            self.optimizer.optimizer,
            total_steps=self.steps_per_epoch * config.epochs,
            floor_lr=config.one_cycle_floor_lr,
            plateau_mode=config.monitor_mode,
            plateau_factor=config.plateau_factor,
            plateau_patience=config.plateau_patience,
            plateau_cooldown=config.plateau_cooldown,
            min_lr=config.min_lr,
        )
        self.epoch = 0  # epochs completed
        self.global_step = 0  # real optimizer steps taken
        self.history: List[Dict[str, float]] = []
        self.should_stop = False  # a callback sets it to end training after the current epoch

    # ---- properties users and callbacks read
    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def checkpoints_dir(self) -> Path:
        """Where ``checkpoint_<n>`` folders go (Accelerate's automatic checkpoint naming)."""
        return Path(self.accelerator.project_dir) / 'checkpoints'

    @property
    def best_dir(self) -> Path:
        """The best model by ``monitor`` so far (``save_best``)."""
        return Path(self.config.output_dir) / 'best'

    def _should_compile(self) -> bool:
        if self.accelerator.state.dynamo_plugin.backend != DynamoBackend.NO:
            return False  # Accelerate compiles in prepare() (accelerate launch --dynamo_backend ...)
        if self.config.compile == 'auto':
            return self.accelerator.device.type == 'cuda'
        return self.config.compile

    def _optimizer_steps_per_epoch(self) -> int:
        batches = len(self.train_loader)
        if self.config.max_steps_per_epoch is not None:
            batches = min(batches, self.config.max_steps_per_epoch)
        return max(1, math.ceil(batches / self.config.grad_accum_steps))

    # ---- the loop
    def fit(self, end_training: bool = True) -> List[Dict[str, float]]:
        """Trains for ``config.epochs`` epochs (continuing a checkpoint when ``config.resume``).

        ``end_training=False`` finishes the trackers but keeps the distributed process group, so
        that further Trainers in the same process (several runs in one script) can still train
        distributed; destroy it after the last run with ``PartialState().destroy_process_group()``.
        """
        config = self.config
        if self.is_main_process:
            save_config(config, config.output_dir)
        if config.resume:
            self.load_checkpoint()
        else:
            self._discard_earlier_run()
        if self.accelerator.trackers == [] and self.accelerator.log_with:
            self.accelerator.init_trackers('timm_aconv', config=tracker_config(config))
        for callback in self.callbacks:
            callback.on_fit_start(self)
        while self.epoch < config.epochs and not self.should_stop:
            train_loss = self.train_one_epoch()
            record = dict(epoch=self.epoch + 1, step=self.global_step, train_loss=train_loss)
            record.update(self.evaluate())
            record.update(
                {
                    f'lr_{group.get("name", index)}': group['lr']
                    for index, group in enumerate(self.optimizer.param_groups)
                }
            )
            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(record[self._monitor_key(record)])
            self._record(record)
            if config.print_epochs and self.is_main_process:
                print(epoch_line(record, config.epochs, self._monitor_key(record), self.unwrapped_model), flush=True)
            if config.save_best and self._improved():
                self._save_best(record)
            self.epoch += 1
            for callback in self.callbacks:
                callback.on_epoch_end(self, record)
            if config.save_every and (
                self.epoch % config.save_every == 0 or self.epoch == config.epochs or self.should_stop
            ):
                self.save_checkpoint()
        self.accelerator.wait_for_everyone()
        if self.is_main_process:
            self.save_model_fn(self.unwrapped_model, Path(config.output_dir))
        for callback in self.callbacks:
            callback.on_fit_end(self)
        if end_training:
            self.accelerator.end_training()  # also destroys the process group
        else:
            for tracker in self.accelerator.trackers:
                tracker.finish()
        return self.history

    def train_one_epoch(self) -> float:
        """One pass over the training set; returns the mean training loss over all processes."""
        accelerator, config = self.accelerator, self.config
        self.model.train()
        self.train_loader.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=accelerator.device)
        samples = torch.zeros((), device=accelerator.device)
        total = (
            len(self.train_loader)
            if config.max_steps_per_epoch is None
            else min(len(self.train_loader), config.max_steps_per_epoch)
        )
        # disable=None: no bar when stderr is not a terminal (piped logs keep the per-epoch line only)
        progress = tqdm(
            self.train_loader,
            total=total,
            desc=f'epoch {self.epoch + 1}/{config.epochs}',
            disable=None if config.progress and accelerator.is_local_main_process else True,
            leave=False,
            mininterval=1.0,
        )
        for batch_index, batch in enumerate(progress):
            with accelerator.accumulate(self.model):
                outputs, targets = self.forward_fn(self.model, batch)
                loss = self.loss_fn(outputs, targets)
                accelerator.backward(loss if config.size_budget is None else loss + self.budget_penalty())
                if accelerator.sync_gradients:
                    if config.clip_value is not None:
                        accelerator.clip_grad_value_(self.model.parameters(), config.clip_value)
                    if config.clip_norm is not None:
                        accelerator.clip_grad_norm_(self.model.parameters(), config.clip_norm)
                self.optimizer.step()  # the sigma clamp hook runs inside, on real steps only
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    self.global_step += 1
                    if self.scheduler is not None and not isinstance(self.scheduler, ReduceLROnPlateau):
                        self.scheduler.step()
                    for callback in self.callbacks:
                        callback.on_optimizer_step(self)
                self.optimizer.zero_grad()
            batch_size = targets.shape[0]
            loss_sum += loss.detach().float() * batch_size
            samples += batch_size
            progress.set_postfix(loss=f'{loss.item():.4f}', refresh=False)
            if batch_index + 1 == total < len(self.train_loader):
                self.train_loader.end()  # leaving early: tell Accelerate this loader is done
                break
        progress.close()
        loss_sum, samples = accelerator.reduce(torch.stack([loss_sum, samples]), reduction='sum')
        return float(loss_sum / samples.clamp(min=1))

    def budget_penalty(self) -> torch.Tensor:
        """The weighted kernel-size budget term of the training loss (``size_budget`` set)."""
        return self.config.size_budget_weight * size_penalty(
            self.unwrapped_model, self.config.size_budget, output_pixels=self.output_pixels
        )

    @torch.no_grad()
    def evaluate(self) -> Dict[str, float]:
        """The metric over the whole validation set (every sample once), keys prefixed ``val_``."""
        self.model.eval()
        self.metric.reset()
        for batch in self.val_loader:
            outputs, targets = self.forward_fn(self.model, batch)
            per_sample = self.metric.per_sample(outputs, targets)
            gathered = self.accelerator.gather_for_metrics(tuple(per_sample))
            self.metric.update(*gathered)
        return {f'val_{key}': value for key, value in self.metric.compute().items()}

    def _monitor_key(self, record: Dict[str, float]) -> str:
        if self.config.monitor not in record:
            raise ConfigError(
                f'monitor={self.config.monitor!r} is not a metric of this task; '
                f'available: {sorted(key for key in record if key.startswith(("val_", "train_")))}'
            )
        return self.config.monitor

    def _record(self, record: Dict[str, float]) -> None:
        key = self._monitor_key(record)
        previous = [row[key] for row in self.history] + [record[key]]
        record[f'best_{key}'] = max(previous) if self.config.monitor_mode == 'max' else min(previous)
        self.history.append(record)
        if self.is_main_process:
            write_history(self.history, self.config.output_dir)
        self.accelerator.log({key: value for key, value in record.items() if key != 'epoch'}, step=record['epoch'])

    # ---- the final and the best model
    def _save_weights(self, model: nn.Module, directory: Path) -> None:
        self.accelerator.save_model(model, str(directory))  # model.safetensors

    def _improved(self) -> bool:
        """Whether the last recorded epoch beats every earlier one on ``monitor`` (the first of equals wins)."""
        values = [row[self.config.monitor] for row in self.history]
        if len(values) == 1:
            return True
        earlier = values[:-1]
        return values[-1] > max(earlier) if self.config.monitor_mode == 'max' else values[-1] < min(earlier)

    def _save_best(self, record: Dict[str, float]) -> None:
        """The model into ``best_dir``, replaced whole: written beside it, then swapped in."""
        if self.is_main_process:
            staging = self.best_dir.with_name('best.partial')
            shutil.rmtree(staging, ignore_errors=True)
            self.save_model_fn(self.unwrapped_model, staging)
            monitor = self.config.monitor
            (staging / 'best.json').write_text(
                json.dumps(dict(epoch=record['epoch'], monitor=monitor, value=record[monitor]))
            )
            previous = self.best_dir.with_name('best.previous')
            shutil.rmtree(previous, ignore_errors=True)
            if self.best_dir.exists():
                self.best_dir.rename(previous)
            staging.rename(self.best_dir)
            shutil.rmtree(previous, ignore_errors=True)

    # ---- checkpoints
    def save_checkpoint(self) -> None:
        """Model, optimizer, RNG and sampler states (Accelerate), scheduler, and last the progress."""
        directory = self.checkpoints_dir / f'checkpoint_{self.accelerator.project_configuration.iteration}'
        self.accelerator.save_state()  # into `directory`; deletes the oldest beyond keep_checkpoints first
        self.accelerator.wait_for_everyone()  # every process wrote its part before the folder is marked complete
        if self.is_main_process:
            if self.scheduler is not None:
                torch.save(self.scheduler.state_dict(), directory / 'scheduler.pt')
            state = dict(epoch=self.epoch, global_step=self.global_step, history=self.history)
            (directory / TRAINER_STATE).write_text(json.dumps(state))
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> None:
        """Continues from the newest complete checkpoint; a clear error when there is none."""
        checkpoint = latest_checkpoint(str(self.accelerator.project_dir))
        if checkpoint is None:
            raise FileNotFoundError(
                f'resume=True but there is no complete checkpoint in {str(self.checkpoints_dir)!r}: train without '
                f'--resume first (checkpoints are written every save_every={self.config.save_every} epochs)'
            )
        if (
            self.is_main_process
        ):  # saves that did not finish (a crash mid-save): never resumed from, in the way of new ones
            for _, folder in checkpoint_folders(self.checkpoints_dir):
                if not (folder / TRAINER_STATE).is_file():
                    shutil.rmtree(folder)
        self.accelerator.wait_for_everyone()
        self.accelerator.load_state(str(checkpoint))
        self.accelerator.project_configuration.iteration = int(CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1)) + 1
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        self.epoch, self.global_step, self.history = state['epoch'], state['global_step'], state['history']
        if self.scheduler is not None:
            self.scheduler.load_state_dict(torch.load(checkpoint / 'scheduler.pt', weights_only=True))

    def _discard_earlier_run(self) -> None:
        """A run that starts over deletes the checkpoints and best model of an earlier run in its folders."""
        if self.is_main_process:
            for directory in (self.checkpoints_dir, self.best_dir):
                shutil.rmtree(directory, ignore_errors=True)
        self.accelerator.wait_for_everyone()
