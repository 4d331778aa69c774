"""The paper's experiments, built on :mod:`timm_aconv.engine`: datasets, tasks, comparisons, figures

Each recipe in :mod:`timm_aconv.recipes` is a thin command line over one module here.

- :mod:`~timm_aconv.experiments.datasets`: the paper's classification datasets and offline ones (digits).
- :mod:`~timm_aconv.experiments.classification`: the classification task (``train_classification``).
- :mod:`~timm_aconv.experiments.compare`: the paper's Algorithm 1 (CONV vs ACONV, t-tests).
- :mod:`~timm_aconv.experiments.segmentation_data`, :mod:`~timm_aconv.experiments.segmentation`,
  :mod:`~timm_aconv.experiments.segmentation_compare`: the U-Net experiment's data, task and comparison.
- :mod:`~timm_aconv.experiments.filters`: learning image filters (paper 4.1).
- :mod:`~timm_aconv.experiments.size_budget_sweep`: kernel-size budgets against accuracy and latency.
- :mod:`~timm_aconv.experiments.signals`: Algorithm 1 in 1-D on generated waveforms.
- :mod:`~timm_aconv.experiments.statistics`: peak summaries, t-test, Holm correction, Cohen's d (Algorithm 1's).
- :mod:`~timm_aconv.experiments.settings`: ``settings.yaml``, the resolved settings of a comparison's runs.
- :mod:`~timm_aconv.experiments.training_plots`: learning curves, sigma histograms, mean-accuracy bands.
- :mod:`~timm_aconv.experiments.kernel_plots`, :mod:`~timm_aconv.experiments.figures`: the experiments' figures.

Needs the ``train`` extra (``pip install 'timm-aconv[train]'``), like :mod:`timm_aconv.engine`.
"""

from .. import engine  # noqa: F401  (names the missing training libraries before any experiment imports them)
