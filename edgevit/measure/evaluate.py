"""Top-1 / top-5 accuracy of exported artifacts (and the float torch model) on a labelled set.

Labelled data comes from :func:`edgevit.data.load_dataset` (``fashion-mnist``, ``digits``, IDX
folders) or from an image folder (``DIR/<class>/<image>``, or ``DIR/{test,val}/<class>/...``),
whose files are fed to each artifact's own preprocessing exactly as ``edgevit predict`` does
(decode, resize the shorter side, centre-crop, normalise), one image at a time.

Dataset classes are matched to the model's labels by name (case, ``_``/``-`` and the synonyms
of ImageNet labels such as ``"tabby, tabby cat"`` are understood); a dataset whose classes are
bare indices ("0".."9") is matched by index when it has as many classes as the model.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevit.data.eval_sets import EvalSet, label_mapping, load_eval_set
from edgevit.errors import ConfigError

__all__ = ["EvalReport", "EvalSet", "evaluate", "label_mapping", "load_eval_set"]


@dataclass
class EvalReport:
    """One row per evaluated artifact (and the float model), plus the dataset facts."""

    rows: list[dict[str, Any]]
    dataset: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "dataset": self.dataset}


def _score(top5: np.ndarray, targets: np.ndarray) -> tuple[int, int]:
    correct1 = int((top5[:, 0] == targets).sum())
    correct5 = int((top5 == targets[:, None]).any(axis=1).sum())
    return correct1, correct5


def _top5(logits: np.ndarray) -> np.ndarray:
    k = min(5, logits.shape[-1])
    # Stable sort on -logits: ties go to the lower index, like edgevit's top_k.
    return np.argsort(-logits, axis=-1, kind="stable")[..., :k]


def _run_set(
    name: str, n: int, predict: Callable[[Any], np.ndarray], images: Sequence[Any], progress: Callable | None
) -> tuple[np.ndarray, float]:
    rows = []
    iterator = progress(images, desc=name, total=n) if progress is not None else images
    start = time.perf_counter()
    for img in iterator:
        rows.append(_top5(np.asarray(predict(img)).reshape(-1)))
    seconds = time.perf_counter() - start
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r)), constant_values=-1) for r in rows]), seconds


def evaluate(
    artifacts: Sequence[str | os.PathLike] = (),
    data: str | os.PathLike = "fashion-mnist",
    *,
    split: str = "test",
    limit: int | None = None,
    float_model: str | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
    threads: int | None = None,
    progress: Callable | None = None,
) -> EvalReport:
    """Top-1/top-5 of each artifact (and of catalog ``float_model`` in torch, with ``pretrained``
    or ``weights``) on ``data``. With a float model, each artifact's top-1 agreement with it is
    reported too. ``progress`` wraps an iterable (e.g. ``tqdm``)."""
    if not artifacts and float_model is None:
        raise ConfigError("nothing to evaluate: pass artifacts and/or --float MODEL")
    if (pretrained or weights is not None) and float_model is None:
        raise ConfigError("--pretrained/--weights apply to the float model; pass --float MODEL too")
    from edgevit.runtimes import Classifier, load

    evalset = load_eval_set(data, split, limit)
    runners: list[tuple[str, dict[str, Any], Callable[[Any], np.ndarray], Sequence[str]]] = []
    for a in artifacts:
        clf = Classifier(load(a, threads=threads))
        m = clf.metadata
        info = {
            "name": Path(a).name,
            "artifact": str(a),
            "model": m.model,
            "target": m.target,
            "precision": m.precision,
            "runtime": clf.runtime.name,
            "resolution": int(m.input_size[0]),
            "fused_input": m.fused_input,
            "weights": m.weights,
        }
        runners.append((Path(a).name, info, lambda img, c=clf: c.logits(img)[0], m.labels))
    if float_model is not None:
        runners.insert(0, _float_runner(float_model, pretrained, weights, threads))
    rows = []
    float_top5: np.ndarray | None = None
    float_weights: str | None = None
    for name, info, predict, labels in runners:
        mapping, how = label_mapping(evalset.classes, labels)
        targets = mapping[evalset.labels]
        top5, seconds = _run_set(name, len(evalset), predict, evalset.images, progress)
        c1, c5 = _score(top5, targets)
        n = len(evalset)
        row = {
            **info,
            "dataset": evalset.name,
            "split": evalset.split,
            "n": n,
            "correct_top1": c1,
            "correct_top5": c5,
            "top1": c1 / n,
            "top5": c5 / n,
            "labels_matched": how,
            "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else None,
        }
        if info.get("target") == "torch":
            float_top5 = top5
            float_weights = info.get("weights")
        elif float_top5 is not None:
            row["agreement_top1"] = float((top5[:, 0] == float_top5[:, 0]).mean())
            if info.get("weights") == "random-init" or float_weights == "random-init":
                row["note"] = "random-init weights: the float model and the artifact are different random models"
        rows.append(row)
    dataset = {"name": evalset.name, "split": evalset.split, "n": len(evalset), "classes": list(evalset.classes),
               "source": evalset.source, "split_note": evalset.note}
    return EvalReport(rows, dataset)


def _float_runner(model: str, pretrained: bool, weights: str | os.PathLike | None, threads: int | None):
    import torch

    from edgevit.converters.export import build_metadata
    from edgevit.models.sources import load_model
    from edgevit.preprocess import preprocess

    if threads:
        torch.set_num_threads(threads)
    # load_model sizes the head from the checkpoint (a model fine-tuned on other classes) and
    # brings the class names it stores.
    resolved = load_model(model, pretrained=pretrained, weights=weights)
    spec, net = resolved.spec, resolved.module
    meta = build_metadata(spec, "torch", "fp32", resolved.labels, net.edgevit_weights)

    def predict(img: Any) -> np.ndarray:
        x = torch.from_numpy(preprocess(img, meta))
        with torch.inference_mode():
            return net(x)[0].float().numpy()

    info = {
        "name": f"torch:{model}",
        "artifact": None,
        "model": spec.name,
        "target": "torch",
        "precision": "fp32",
        "runtime": "torch-eager",
        "resolution": int(spec.input_size[0]),
        "weights": net.edgevit_weights,
    }
    return (f"torch:{model}", info, predict, meta.labels)
