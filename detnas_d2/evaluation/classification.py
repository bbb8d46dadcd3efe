"""Top-1 / top-5 accuracy of a classifier, exact over a dataset split across processes."""

import itertools
import logging
from collections import OrderedDict

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

__all__ = ["ClassificationEvaluator"]

logger = logging.getLogger(__name__)


class ClassificationEvaluator(DatasetEvaluator):
    """Consumes inputs with "label" and outputs with "pred_logits" (as `DetNASClassifier` makes).

    Returns {"classification": {"top1": %, "top5": %}} on the main process (an empty dict elsewhere):
    the percentage of images whose label is among the k highest scores, with k = min(5, num_classes)
    for "top5". Counts are summed over processes, so the result is exact for any split of the dataset.
    """

    def __init__(self, dataset_name: str = "", distributed: bool = True):
        self._dataset_name = dataset_name
        self._distributed = distributed
        self.reset()

    def reset(self):
        self._counts = []  # per batch: (number of images, top-1 hits, top-5 hits)

    def process(self, inputs, outputs):
        logits = torch.stack([o["pred_logits"] for o in outputs])
        labels = torch.as_tensor([x["label"] for x in inputs], device=logits.device)
        k = min(5, logits.shape[1])
        hits = (logits.topk(k, dim=1).indices == labels[:, None]).cumsum(dim=1)[:, [0, k - 1]]
        top1, top5 = hits.sum(dim=0).tolist()
        self._counts.append((len(inputs), top1, top5))

    def evaluate(self):
        counts = self._counts
        if self._distributed:
            comm.synchronize()
            counts = list(itertools.chain(*comm.gather(counts, dst=0)))
            if not comm.is_main_process():
                return {}
        num_images = sum(c[0] for c in counts)
        if num_images == 0:
            logger.warning(f"ClassificationEvaluator on '{self._dataset_name}' received no images")
            return {}
        top1 = 100.0 * sum(c[1] for c in counts) / num_images
        top5 = 100.0 * sum(c[2] for c in counts) / num_images
        logger.info(
            f"Classification on '{self._dataset_name}' ({num_images} images): "
            f"top-1 {top1:.2f}%, top-5 {top5:.2f}%"
        )
        return OrderedDict(classification={"top1": top1, "top5": top5})
