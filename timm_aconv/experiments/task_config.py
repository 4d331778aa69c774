""":class:`TaskConfig`: the settings every training recipe adds to the engine's, whatever its task

Where the data lives, how it is batched and loaded, the figures and the Hub: the classification
(:mod:`~timm_aconv.experiments.classification`) and segmentation (:mod:`~timm_aconv.experiments.segmentation`)
recipes subclass it with their model and dataset fields.
"""

from dataclasses import dataclass
from typing import Optional

from jsonargparse.typing import NonNegativeInt, PositiveInt

from ..engine.engine_config import EngineConfig

__all__ = ['TaskConfig']


@dataclass
class TaskConfig(EngineConfig):
    """The engine's settings plus the data, the loaders, the figures and the Hub."""

    data_dir: str = 'data'
    """folder holding (or receiving) downloaded datasets"""
    download: bool = True
    """download a dataset missing from data_dir"""
    batch_size: PositiveInt = 64
    """training batch size: the GLOBAL batch over all processes (each of N processes loads batch_size / N;
    N must divide it)"""
    val_batch_size: Optional[PositiveInt] = None
    """validation batch size: the GLOBAL batch over all processes; null: batch_size"""
    num_workers: NonNegativeInt = 0
    """DataLoader worker processes (0: load in the main process)"""
    plots: bool = True
    """write the PNG figures"""
    push_to_hub: Optional[str] = None
    """Hugging Face Hub repo id: the best model of the (single) run is pushed there after training; null: no push"""
