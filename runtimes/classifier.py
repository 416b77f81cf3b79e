"""A :class:`Classifier` wraps a runtime with the artifact's own preprocessing and labels."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from edgevit.preprocess import ImageInput, preprocess
from edgevit.runtimes.base import Runtime, load

__all__ = ["Classifier", "Prediction", "softmax", "top_k"]


@dataclass(frozen=True)
class Prediction:
    """One ranked class: its index, its label and its softmax probability."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "label": self.label, "score": self.score}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def top_k(logits: np.ndarray, labels: Sequence[str], k: int = 5) -> list[Prediction]:
    """Top-``k`` predictions of one logits vector (ties broken by the lower index)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    probs = softmax(logits.reshape(-1))
    order = np.argsort(-probs, kind="stable")[: min(k, probs.size)]
    return [
        Prediction(int(i), labels[i] if i < len(labels) else str(int(i)), float(probs[i])) for i in order
    ]


class Classifier:
    """Classify images with an artifact: preprocessing and labels come from its metadata.

    >>> clf = Classifier.load("mobilevit_xxs.tflite")          # doctest: +SKIP
    >>> clf.predict("cat.jpg", top_k=5)[0].label                # doctest: +SKIP
    'tabby, tabby cat'
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metadata = runtime.metadata

    @classmethod
    def load(cls, path: str | os.PathLike, threads: int | None = None) -> Classifier:
        return cls(load(path, threads=threads))

    @property
    def labels(self) -> tuple[str, ...]:
        return self.metadata.labels

    def preprocess(self, image: ImageInput) -> np.ndarray:
        return preprocess(image, self.metadata)

    def logits(self, images: ImageInput | Iterable[ImageInput]) -> np.ndarray:
        """Logits (n, classes) for one image or several, one forward pass each."""
        if isinstance(images, (str, os.PathLike, np.ndarray)) or hasattr(images, "mode"):
            images = [images]  # type: ignore[list-item]
        rows = [self.runtime.run(self.preprocess(img))[0] for img in images]  # type: ignore[union-attr]
        return np.stack(rows) if rows else np.zeros((0, self.metadata.num_classes), np.float32)

    def predict(self, image: ImageInput, top_k: int = 5) -> list[Prediction]:
        """The top-``top_k`` labels and softmax scores for one image."""
        return _top_k(self.logits(image)[0], self.labels, top_k)


_top_k = top_k
