"""The covariance suite: the train step of ``aconv_resnet20`` (k=7, batch 32, 32x32) with 'diag' and 'full'
envelopes against the same model with 'spherical' ones (the paper's), and the spherical model against itself."""

from typing import Dict, List

import timm
import torch

from benchmarks import report
from benchmarks.steps import MODEL_KERNEL_SIZE, train_step_fn
from benchmarks.timing import Measure

COVARIANCE_BATCH = 32


def covariance_cases(measure: Measure) -> List[Dict]:
    """Elliptic envelopes: the train step of ``aconv_resnet20`` with each ``covariance_type`` against the
    spherical model (each model a fresh copy of one seed), interleaved; the spherical model against
    itself as the noise floor."""
    steps = {}
    for covariance_type in ('spherical', 'diag', 'full'):
        torch.manual_seed(0)
        model = timm.create_model('aconv_resnet20', kernel_size=MODEL_KERNEL_SIZE, covariance_type=covariance_type)
        steps[covariance_type] = train_step_fn(model, COVARIANCE_BATCH, 32)
    torch.manual_seed(0)
    twin = timm.create_model('aconv_resnet20', kernel_size=MODEL_KERNEL_SIZE)
    results = []
    for covariance_type, reference in (('diag', 'spherical'), ('full', 'spherical')):
        comparison = measure(steps[covariance_type], steps[reference], memory=False)
        case = f"train step b{COVARIANCE_BATCH} 32x32 covariance_type='{covariance_type}' vs 'spherical'"
        results.append(report.row('covariance', case, comparison, f'aconv_resnet20 k={MODEL_KERNEL_SIZE}'))
    comparison = measure(train_step_fn(twin, COVARIANCE_BATCH, 32), steps['spherical'], memory=False)
    results.append(report.row('covariance', "noise floor: 'spherical' vs 'spherical' train step", comparison))
    return results
