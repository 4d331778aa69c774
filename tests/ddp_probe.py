"""Run by tests/test_recipes_classification.py under ``torchrun --nproc_per_node 2``.

Calls recipes/train_classification.py's ``main`` with the given arguments plus a callback that,
after every optimizer step, saves this rank's sigma values and training windows to
``<output_dir>/sigma_rank<r>.pt``.
"""

import importlib.util
import sys
from pathlib import Path

import torch

from timm_aconv import adaptive_layers
from timm_aconv.engine import Callback


class SigmaPerStep(Callback):
    def __init__(self) -> None:
        self.steps = []

    def on_optimizer_step(self, trainer) -> None:
        layers = list(adaptive_layers(trainer.unwrapped_model))
        self.steps.append(
            dict(
                sigma=torch.cat([layer.sigma.detach().clone() for layer in layers]),
                low=torch.tensor([layer.sigma_bounds[0] for layer in layers for _ in range(layer.out_channels)]),
                high=torch.tensor([layer.sigma_bounds[1] for layer in layers for _ in range(layer.out_channels)]),
                windows=torch.tensor([layer.kernel_window() for layer in layers]),  # train_crop_tol
            )
        )

    def on_fit_end(self, trainer) -> None:
        rank = trainer.accelerator.process_index
        torch.save(self.steps, Path(trainer.config.output_dir) / f'sigma_rank{rank}.pt')


if __name__ == '__main__':
    recipe_path = Path(__file__).resolve().parents[1] / 'recipes' / 'train_classification.py'
    spec = importlib.util.spec_from_file_location('train_classification', recipe_path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    recipe.main(sys.argv[1:], callbacks=[SigmaPerStep()])
