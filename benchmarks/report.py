"""What a run prints and saves: one table row per timed pair, the table, and the machine it ran on."""

import os
import platform
from typing import Dict, List

import timm
import torch

import timm_aconv
from benchmarks.timing import Comparison

HEADER = ('suite', 'case', 'adaptive ms', 'ordinary ms', 'ratio', 'ratio IQR', 'peak MiB a/o', 'note')


def row(suite: str, case: str, comparison: Comparison, note: str = '') -> Dict:
    """The result row of one timed pair, printed as it comes (a line of :func:`format_table`)."""
    result = dict(suite=suite, case=case, **comparison.as_dict(), note=note)
    print(format_row(result), flush=True)
    return result


def format_row(result: Dict) -> str:
    peak = (
        '–'
        if result['adaptive_peak_mib'] is None
        else f'{result["adaptive_peak_mib"]:.1f}/{result["ordinary_peak_mib"]:.1f}'
    )
    return (
        f'| {result["suite"]} | {result["case"]} | {result["adaptive_ms"]:.2f} | {result["ordinary_ms"]:.2f} | '
        f'**{result["ratio"]:.3f}** | {result["ratio_q1"]:.3f}–{result["ratio_q3"]:.3f} | {peak} | {result["note"]} |'
    )


def table_header(columns: tuple = HEADER) -> str:
    """The first line of a Markdown table with ``columns``."""
    return '| ' + ' | '.join(columns) + ' |'


def format_table(rows: List[Dict]) -> str:
    lines = [table_header(), '|' + '---|' * len(HEADER)]
    return '\n'.join(lines + [format_row(result) for result in rows])


def machine_info(device: str = 'cpu') -> Dict:
    """Versions, CPU, cores and torch threads (and the GPU and its settings for a CUDA ``device``)."""
    info = dict(
        torch=torch.__version__,
        timm=timm.__version__,
        timm_aconv=timm_aconv.__version__,
        python=platform.python_version(),
        cpu=platform.processor() or platform.machine(),
        cores=os.cpu_count(),
        threads=torch.get_num_threads(),
    )
    if torch.device(device).type == 'cuda':
        properties = torch.cuda.get_device_properties(device)
        info.update(
            gpu=properties.name,
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            tf32_conv=torch.backends.cudnn.allow_tf32,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    return info
