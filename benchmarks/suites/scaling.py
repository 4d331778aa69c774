"""The scaling suite: the train-step ratio of ``aconv_resnet20`` vs ``conv_resnet20`` (k=7) at image sizes
32/64/128 (batch 8) and batch sizes 8/32/128 (32x32)."""

from typing import Dict, List

from benchmarks import report
from benchmarks.steps import resnet20_pair, train_step_fn
from benchmarks.timing import Measure


def scaling_cases(measure: Measure) -> List[Dict]:
    results = []
    adaptive, ordinary = resnet20_pair()
    # image size at batch 8, then batch size at 32x32 (batch 64 is the model suite's train step)
    for batch, size in ((8, 32), (8, 64), (8, 128), (32, 32), (128, 32)):
        comparison = measure(
            train_step_fn(adaptive, batch, size), train_step_fn(ordinary, batch, size), warmup=1, memory=False
        )
        results.append(
            report.row(
                'scaling',
                f'train step b{batch} {size}x{size}',
                comparison,
                f'overhead {comparison.adaptive_ms - comparison.ordinary_ms:+.1f} ms/step',
            )
        )
    return results
