"""Train a timm image classifier with adaptive (or ordinary) convolutions.

    python -m timm_aconv.recipes.train_classification --config digits   # installed: a shipped config by name
    python recipes/train_classification.py --config recipes/configs/digits.yaml
    python recipes/train_classification.py --config recipes/configs/simple_cnn_mnist.yaml --kernel_size 9
    accelerate launch --multi_gpu recipes/train_classification.py --config recipes/configs/resnet_cifar10.yaml
    torchrun --standalone --nproc_per_node 2 recipes/train_classification.py --config ... --cpu
    python recipes/train_classification.py --model resnet18 --convert --kernel_size 7 --dataset cifar10

Every key of the YAML config can be overridden on the command line. A second run into an
output_dir that holds a run needs --resume (continue it) or --overwrite. The logic lives in
timm_aconv.experiments.classification.
"""

from typing import List, Optional, Sequence

from accelerate import PartialState

from timm_aconv.engine import Callback, parse_config, run_cli
from timm_aconv.engine.output_dir import check_output_dir
from timm_aconv.experiments.classification import ClassificationConfig, train_classification


def main(argv: Optional[List[str]] = None, callbacks: Sequence[Callback] = ()) -> None:
    config = parse_config(ClassificationConfig, argv, description=__doc__)
    check_output_dir(config.output_dir, config.resume, config.overwrite)
    history = train_classification(config, callbacks)
    best = max(record['val_accuracy'] for record in history)
    PartialState().print(
        f'{config.model} on {config.dataset}: peak validation accuracy {best:.4f}, results in {config.output_dir}'
    )


if __name__ == '__main__':
    run_cli(main)
