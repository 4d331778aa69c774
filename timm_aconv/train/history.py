""" Per-epoch metrics written as ``metrics.csv`` and ``metrics.json`` (one row per epoch) """
import csv
import json
from pathlib import Path
from typing import Dict, List

__all__ = ['write_history', 'read_history']

History = List[Dict[str, float]]


def write_history(history: History, output_dir: str) -> None:
    """ Rewrites ``output_dir/metrics.csv`` and ``output_dir/metrics.json`` with every epoch so far. """
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for record in history for key in record))
    with open(directory / 'metrics.csv', 'w', newline='') as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    (directory / 'metrics.json').write_text(json.dumps(history, indent=1))


def read_history(output_dir: str) -> History:
    """ The epochs recorded in ``output_dir/metrics.json``. """
    return json.loads((Path(output_dir) / 'metrics.json').read_text())
