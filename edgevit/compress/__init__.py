"""Making a model smaller or better on the host: training, distillation, pruning, QAT (needs torch).

All four run the one training loop in :mod:`edgevit.compress.loop` (:func:`~edgevit.compress.loop.fit`).
"""
