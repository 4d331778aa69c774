"""Wall time of each epoch of the classification recipe: what one epoch of a comparison's run costs

    python benchmarks/epoch_time.py --config recipes/configs/simple_cnn_fashion_mnist.yaml --model conv_simple_cnn \
        --train_subset 6000 --split_seed 0 --batch_size 64 --val_batch_size 1000 --num_threads 2 --epochs 2 \
        --output_dir runs/epoch_time --overwrite

Takes the arguments of ``recipes/train_classification.py`` and runs it as it is, printing after each of its
epoch lines ``epoch N wall S s``: training, validation and the checkpoint together, as a comparison pays
them. The low-data comparison's settings (``simple_cnn_fashion_mnist_lowdata.yaml``, a comparison config:
the classification recipe refuses its ``kernel_sizes`` and ``repeats``) were fixed from the command above.
"""

import sys
import time

from timm_aconv.engine import Callback, run_cli
from timm_aconv.recipes.train_classification import main


class EpochClock(Callback):
    """Prints each epoch's wall time (from the end of the one before, the first from the start of training)."""

    def on_fit_start(self, trainer) -> None:
        self.last = time.perf_counter()

    def on_epoch_end(self, trainer, record) -> None:
        now = time.perf_counter()
        print(f'epoch {record["epoch"]} wall {now - self.last:.1f} s', flush=True)
        self.last = now


if __name__ == '__main__':
    start = time.perf_counter()
    run_cli(lambda: main(sys.argv[1:], callbacks=[EpochClock()]))
    print(f'total {time.perf_counter() - start:.1f} s (imports excluded)')
