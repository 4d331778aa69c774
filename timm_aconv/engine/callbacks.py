"""Hooks into the training engine, and the sigma recorder built on them

A :class:`Callback` sees the :class:`~timm_aconv.engine.trainer.Trainer` at fixed points; override
the ones you need. :class:`SigmaRecorder` keeps every adaptive layer's apertures after each
epoch (the data of the sigma-histogram plots).
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List

from ..layers import adaptive_layers

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ['Callback', 'SigmaRecorder']


class Callback:
    """No-op hooks; every one runs on every process (guard file output with ``trainer.is_main_process``)."""

    def on_fit_start(self, trainer: 'Trainer') -> None:
        pass

    def on_optimizer_step(self, trainer: 'Trainer') -> None:
        """After each real optimizer step (not after accumulation micro-batches), sigma already clamped."""

    def on_epoch_end(self, trainer: 'Trainer', record: Dict[str, float]) -> None:
        """After evaluation and logging; set ``trainer.should_stop = True`` to end training (checkpointed)."""

    def on_fit_end(self, trainer: 'Trainer') -> None:
        pass


class SigmaRecorder(Callback):
    """Sigma of every adaptive layer at the start and after each epoch, saved as ``sigmas.json``.

    ``epochs[layer_name]`` is a list (one entry per recorded epoch, the first is the initial
    state) of per-filter sigma lists.
    """

    def __init__(self, filename: str = 'sigmas.json') -> None:
        self.filename = filename
        self.epochs: Dict[str, List[List[float]]] = {}

    def _record(self, trainer: 'Trainer') -> None:
        model = trainer.unwrapped_model
        names = {id(module): name for name, module in model.named_modules()}
        for layer in adaptive_layers(model):
            self.epochs.setdefault(names[id(layer)], []).append(layer.sigma.detach().float().cpu().tolist())

    def on_fit_start(self, trainer: 'Trainer') -> None:
        path = Path(trainer.config.output_dir) / self.filename
        if trainer.epoch > 0 and path.is_file():  # resumed: continue the recorded epochs
            self.epochs = {
                name: per_epoch[: trainer.epoch + 1] for name, per_epoch in json.loads(path.read_text()).items()
            }
        if not self.epochs:
            self._record(trainer)

    def on_epoch_end(self, trainer: 'Trainer', record: Dict[str, float]) -> None:
        self._record(trainer)
        if trainer.is_main_process and self.epochs:
            path = Path(trainer.config.output_dir) / self.filename
            path.write_text(json.dumps(self.epochs))
