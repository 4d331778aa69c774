"""Per-epoch metrics: written as ``metrics.csv`` and ``metrics.json`` (one row per epoch), printed as one line"""

import csv
import json
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from ..layers import adaptive_layers

__all__ = ['epoch_line', 'read_history', 'write_history']

History = List[Dict[str, float]]


def write_history(history: History, output_dir: str) -> None:
    """Rewrites ``output_dir/metrics.csv`` and ``output_dir/metrics.json`` with every epoch so far."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for record in history for key in record))
    with open(directory / 'metrics.csv', 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    (directory / 'metrics.json').write_text(json.dumps(history, indent=1))


def read_history(output_dir: str) -> History:
    """The epochs recorded in ``output_dir/metrics.json``."""
    return json.loads((Path(output_dir) / 'metrics.json').read_text())


def epoch_line(record: Dict[str, float], epochs: int, monitor: str, model: Optional[nn.Module] = None) -> str:
    """The one line printed per epoch: epoch, train loss, the monitored metric (and its best), the
    first other validation metric, the learning rates and the range of sigma over ``model``'s
    adaptive layers, e.g. (``recipes/configs/digits.yaml``) ``epoch 1/15  train_loss 1.1168
    val_loss 0.2461 (best 0.2461)  val_accuracy 0.9361  lr 0.01  sigma [0.143, 0.534]``."""
    parts = [f'epoch {record["epoch"]}/{epochs}', f'train_loss {record["train_loss"]:.4f}']
    if monitor in record:
        parts.append(f'{monitor} {record[monitor]:.4f} (best {record.get(f"best_{monitor}", record[monitor]):.4f})')
    other = next(
        (
            key
            for key in record
            if key.startswith('val_') and key != monitor and key != 'val_samples' and isinstance(record[key], float)
        ),
        None,
    )
    if other is not None:
        parts.append(f'{other} {record[other]:.4f}')
    rates = {key[len('lr_') :]: value for key, value in record.items() if key.startswith('lr_')}
    if len(set(rates.values())) == 1:
        parts.append(f'lr {next(iter(rates.values())):.3g}')
    elif rates:
        parts.append(' '.join(f'lr_{name} {value:.3g}' for name, value in rates.items()))
    if model is not None:
        sigmas = [layer.sigma.detach() for layer in adaptive_layers(model)]
        if sigmas:
            sigma = torch.cat([values.flatten().float().cpu() for values in sigmas])
            parts.append(f'sigma [{float(sigma.min()):.3f}, {float(sigma.max()):.3f}]')
    return '  '.join(parts)
