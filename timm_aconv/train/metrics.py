""" Evaluation metrics that stay exact under data-parallel evaluation

The engine evaluates every batch on every process, turns it into *per-sample* values with
:meth:`Metric.per_sample` (the batch axis first), collects them from all processes with
``accelerator.gather_for_metrics`` — which drops the samples a distributed sampler repeated to
even out the last batch, so each validation sample counts exactly once — and hands the
gathered tensors to :meth:`Metric.update`. Every process therefore computes the same numbers.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ['Metric', 'ClassificationMetric', 'SegmentationMetric']


class Metric:
    """ The contract between a task and the engine's evaluation loop.

    Subclasses implement:

    - ``per_sample(outputs, targets) -> tuple of tensors``: runs on each process before the
      gather; every tensor has the batch axis first (reduce here what you can, e.g. logits →
      predicted labels, or a per-image confusion matrix of shape (batch, classes, classes)).
    - ``update(*gathered)``: accumulates the gathered tensors (the whole batch of all processes).
    - ``compute() -> dict``: the epoch's numbers, e.g. ``{'accuracy': 0.98, 'loss': 0.05}``;
      the engine prefixes them with ``val_``.
    - ``reset()``: clears the accumulators (called before each evaluation).
    """

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def update(self, *gathered: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> Dict[str, float]:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class ClassificationMetric(Metric):
    """ Top-1 accuracy and mean cross-entropy over the validation set, and the sample count. """

    def __init__(self) -> None:
        self.reset()

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        loss = F.cross_entropy(outputs.float(), targets, reduction='none')
        correct = (outputs.argmax(dim=1) == targets).float()
        return loss, correct

    def update(self, loss: torch.Tensor, correct: torch.Tensor) -> None:
        self.loss_sum += float(loss.sum())
        self.correct += float(correct.sum())
        self.samples += int(correct.numel())

    def compute(self) -> Dict[str, float]:
        if self.samples == 0:
            raise RuntimeError('ClassificationMetric.compute() before any update: the validation set is empty')
        return dict(accuracy=self.correct / self.samples, loss=self.loss_sum / self.samples, samples=self.samples)

    def reset(self) -> None:
        self.loss_sum, self.correct, self.samples = 0.0, 0.0, 0


class SegmentationMetric(Metric):
    """ Pixel accuracy, mean IoU over classes, per-class IoU and mean cross-entropy per image.

    ``per_sample`` returns one confusion matrix per image (rows: true class, columns: predicted),
    so the engine's ``gather_for_metrics`` counts every validation image exactly once.

    Targets are class indices, long or float. Float targets with fractional values (masks resized
    bilinearly, the authors' validation) are scored as Keras scored them: such a pixel equals no
    prediction, so it counts as an error in the pixel accuracy (it is left out of the confusion
    matrix and the IoUs), and the cross-entropy uses the label truncated to an integer.
    """

    def __init__(self, num_classes: int, class_names: Optional[Sequence[str]] = None) -> None:
        class_names = tuple(f'class{index}' for index in range(num_classes)) if class_names is None else class_names
        if len(class_names) != num_classes:
            raise ValueError(f'class_names must name the {num_classes} classes, got {list(class_names)}')
        self.num_classes, self.class_names = num_classes, tuple(class_names)
        self.reset()

    def per_sample(self, outputs: torch.Tensor, targets: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        classes = self.num_classes
        labels = targets.long()  # truncation: the labels Keras' sparse cross-entropy used for float masks
        whole = (targets == labels).flatten(1)  # False where a bilinear resize left a fractional label
        index = (labels * classes + outputs.argmax(1)).flatten(1)  # (B, H*W)
        counts = torch.zeros(index.shape[0], classes * classes, device=index.device)
        counts.scatter_add_(1, index, whole.to(counts.dtype))
        loss = F.cross_entropy(outputs.float(), labels, reduction='none').flatten(1).mean(1)
        return counts.view(-1, classes, classes), loss, (~whole).sum(1).to(counts.dtype)

    def update(self, counts: torch.Tensor, loss: torch.Tensor, fractional: torch.Tensor) -> None:
        self.confusion += counts.sum(0).double().cpu()
        self.fractional += float(fractional.sum())
        self.loss_sum += float(loss.sum())
        self.images += loss.numel()

    def compute(self) -> Dict[str, float]:
        if self.images == 0:
            raise RuntimeError('SegmentationMetric.compute() before any update: the validation set is empty')
        true_positive = self.confusion.diag()
        union = self.confusion.sum(0) + self.confusion.sum(1) - true_positive
        iou = true_positive / union.clamp(min=1)
        pixels = float(self.confusion.sum()) + self.fractional
        values = dict(pixel_accuracy=float(true_positive.sum()) / pixels, miou=float(iou.mean()),
                      loss=self.loss_sum / self.images)
        values.update({f'iou_{name}': float(value) for name, value in zip(self.class_names, iou)})
        return values

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)
        self.fractional, self.loss_sum, self.images = 0.0, 0.0, 0
