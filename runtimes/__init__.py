"""Device-side runtimes: load an exported artifact and run it without torch.

>>> from edgevit.runtimes import Classifier
>>> clf = Classifier.load("out/mobilevit_xxs.tflite")   # doctest: +SKIP
>>> [p.label for p in clf.predict("cat.jpg", top_k=3)]  # doctest: +SKIP
"""

from edgevit.runtimes.base import Runtime, available_runtimes, get_runtime, load, register_runtime, runtime_for_path
from edgevit.runtimes.classifier import Classifier, Prediction, softmax, top_k

__all__ = [
    "Classifier",
    "Prediction",
    "Runtime",
    "available_runtimes",
    "get_runtime",
    "load",
    "register_runtime",
    "runtime_for_path",
    "softmax",
    "top_k",
]
