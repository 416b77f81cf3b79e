"""Quantization-aware training (QAT) to int8 for TFLite and ExecuTorch, through PyTorch 2 Export.

>>> from edgevit.compress.qat import qat
>>> r = qat("vit_fmnist_tiny", "fashion-mnist", weights="runs/distill/vit_fmnist_tiny.safetensors",
...         targets=("tflite", "executorch"), epochs=1, out="runs/qat")     # doctest: +SKIP
>>> [(a.target, a.method, a.top1) for a in r.artifacts]                   # doctest: +SKIP

The flow, per target (each target has its own quantizer, so its own fake-quantized graph):

1. the float model gets the target's edge rewrites (the converter's ``prepare``: what ``export()``
   deploys), BatchNorm folded into the preceding convolution (running statistics: BN is frozen
   during QAT, the usual practice when fine-tuning a trained model), and is exported with
   ``torch.export`` (dynamic batch);
2. ``prepare_qat_pt2e`` inserts fake-quantizers where the target's quantizer annotates: the XNNPACK
   quantizer (ExecuTorch) or litert-torch's ``PT2EQuantizer`` (TFLite), both symmetric per-channel
   int8 weights and per-tensor int8 activations, with moving-average range observers;
3. the graph is fine-tuned on the training split with the float model as teacher (soft targets,
   :func:`edgevit.compress.distill.distillation_loss`) and labels; the range observers are frozen after
   ``freeze_observers`` of the steps, so the last steps train against fixed scales;
4. ``convert_pt2e`` turns fake-quantizers into quantize/dequantize pairs, and the graph is lowered:
   ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer=...))`` (int8 TFLite
   kernels, int8 input and output tensors) or ExecuTorch's XNNPACK lowering. The edgevit metadata
   is embedded as :mod:`edgevit.converters` embeds it (TFLite metadata entry; ExecuTorch constant
   method + SHA-256 digest), with ``extra.quantization.method = "qat"``.

Post-training quantization of the *same* float model through the *same* quantizer and lowering
(calibrated with histogram observers on ``calibration_images`` training images) gives the PTQ
baseline (``compare_ptq``): only the weights differ, so the accuracy gap is QAT's doing. Both
artifacts are scored on the real test split through edgevit's runtimes.

LayerNorm stays float on both targets (ExecuTorch's rewrite computes its means with linear
layers, which are excluded from quantization; TFLite's quantizer does not annotate norms), as do
softmax, GELU and the attention matmuls between activations, which neither quantizer annotates.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgevit.errors import ConfigError, ConversionError, DataError, OutputExistsError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgevit.data import Dataset
    from edgevit.models import ModelSpec

__all__ = [
    "QATArtifact",
    "QATResult",
    "QAT_TARGETS",
    "evaluate_artifact",
    "fold_batchnorm",
    "make_quantizer",
    "prepare_float",
    "qat",
    "quantize_and_export",
]

QAT_TARGETS = ("tflite", "executorch")
_SUFFIX = {"tflite": ".tflite", "executorch": ".pte"}


@dataclass(frozen=True)
class QATArtifact:
    """One int8 artifact and its accuracy on the test split."""

    target: str
    method: str  # "qat" | "ptq"
    path: str
    bytes: int
    top1: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "method": self.method, "path": self.path, "bytes": self.bytes,
                "top1": self.top1, "seconds": round(self.seconds, 2), "details": dict(self.details)}


@dataclass(frozen=True)
class QATResult:
    model: str
    dataset: str
    float_top1: float
    artifacts: tuple[QATArtifact, ...]
    history: dict[str, list[Any]]
    seconds: float
    warnings: tuple[str, ...] = ()

    def artifact(self, target: str, method: str) -> QATArtifact:
        for a in self.artifacts:
            if a.target == target and a.method == method:
                return a
        raise KeyError((target, method))

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": self.dataset,
            "float_top1": self.float_top1,
            "artifacts": [a.to_dict() for a in self.artifacts],
            "history": {t: [h.to_dict() for h in hs] for t, hs in self.history.items()},
            "seconds": round(self.seconds, 1),
            "warnings": list(self.warnings),
        }


# ----------------------------------------------------------------------------------------------
# Building blocks


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every ``Conv2d`` directly followed by a ``BatchNorm2d`` inside an ``nn.Sequential``
    into one convolution (running statistics), in place; returns ``model``."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        i = 0
        while i < len(names) - 1:
            conv, bn = module._modules[names[i]], module._modules[names[i + 1]]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                module._modules[names[i]] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                module._modules[names[i + 1]] = nn.Identity()
                i += 2
            else:
                i += 1
    return model


def make_quantizer(target: str, qat: bool, model: nn.Module | None = None) -> Any:
    """The PT2E quantizer of ``target``: symmetric per-channel int8 weights, per-tensor int8
    activations (``qat``: fake-quantizers with moving-average observers; else histogram
    observers for calibration). On ExecuTorch, norm modules of ``model`` are left float."""
    if target == "executorch":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
        if model is not None:
            for cls in {type(m) for m in model.modules() if "Norm" in type(m).__name__}:
                quantizer.set_module_type(cls, None)
        return quantizer
    if target == "tflite":
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config

        class _Quantizer(PT2EQuantizer):
            # litert-torch's conv+BN QAT annotator hands torchao a bare function, which this
            # torchao refuses (export needs an nn.Module); BatchNorm is folded before QAT, so
            # there are no conv+BN patterns to annotate anyway.
            STATIC_QAT_ONLY_OPS: list[str] = []

        return _Quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    raise ConfigError(f"QAT targets are {', '.join(QAT_TARGETS)}, not {target!r}")


def prepare_float(model: nn.Module, target: str, rewrite: bool = True) -> nn.Module:
    """A copy of ``model`` as ``export()`` deploys it to ``target`` (reparameterised, the
    converter's edge rewrites) with BatchNorm folded."""
    from edgevit.converters.base import get_converter
    from edgevit.converters.rewrites import reparameterize

    edge = reparameterize(copy.deepcopy(model)).eval()
    converter = get_converter(target)
    options = {} if rewrite else {"rewrite": False}
    try:
        config = converter.make_config("int8", options, calibration="(qat)")
    except ConfigError:
        config = converter.make_config("int8", {}, calibration="(qat)")
    edge = converter.prepare(edge, config)
    fold_batchnorm(edge)
    for p in edge.parameters():
        p.requires_grad_(True)
    return edge.eval()


def _export_graph(model: nn.Module, example: torch.Tensor) -> tuple[Any, bool]:
    from edgevit.converters.executorch import export_for_quant

    return export_for_quant(model, example)


def _eval_mode(graph: Any) -> Any:
    """Switch an exported (converted) graph to inference mode: litert-torch warns about, and
    may keep, training-mode ops otherwise."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    allow_exported_model_train_eval(graph)
    graph.eval()  # swaps the graph's train-mode ops (dropout, batch norm) for their eval forms
    for module in graph.modules():  # ... and, unlike nn.Module.eval, leaves the flag alone
        module.training = False
    return graph


def _forward_batches(module: Any, inputs: np.ndarray, batched: bool, batch: int = 100) -> np.ndarray:
    import torch

    rows = []
    with torch.no_grad():
        step = batch if batched else 1
        for i in range(0, len(inputs), step):
            out = module(torch.from_numpy(np.ascontiguousarray(inputs[i : i + step])))
            rows.append(out.float().reshape(out.shape[0], -1).numpy())
    return np.concatenate(rows)


def quantize_and_export(
    converted: Any,
    quantizer: Any,
    target: str,
    example: torch.Tensor,
    path: Path,
    spec: ModelSpec,
    weights_tag: str,
    method: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Lower a ``convert_pt2e`` graph to ``target`` with edgevit metadata and write ``path``."""
    from edgevit.converters.export import build_metadata
    from edgevit.metadata import METADATA_KEY

    quant = {"method": method, "tool": "PT2E " + ("XNNPACKQuantizer" if target == "executorch" else
                                                  "litert-torch PT2EQuantizer"),
             "scheme": "int8 static: per-channel symmetric int8 weights, per-tensor int8 activations",
             **(extra or {})}
    metadata = build_metadata(spec, target, "int8", spec.label_names(), weights_tag, extra={"quantization": quant})
    details: dict[str, Any] = {}
    if target == "tflite":
        import litert_torch
        from litert_torch.quantize.quant_config import QuantConfig

        from edgevit.converters.tflite import embed_tflite_metadata

        try:
            edge_model = litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        except Exception as exc:
            raise ConversionError(f"litert-torch could not convert the {method} int8 graph: "
                                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}") from exc
        data = embed_tflite_metadata(edge_model.model_content(), METADATA_KEY, metadata.to_json().encode())
    else:
        from edgevit.converters.executorch import lower

        data, report = lower(converted, example, metadata)
        details["delegation"] = report.to_dict()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return details


def evaluate_artifact(path: str | os.PathLike, inputs: np.ndarray, labels: np.ndarray, threads: int = 2) -> float:
    """Top-1 of an artifact on preprocessed float NCHW ``inputs`` through edgevit's runtime."""
    from edgevit.runtimes import load

    runtime = load(path, threads=threads)
    correct = 0
    for i in range(0, len(inputs), 100):
        logits = runtime.run(np.ascontiguousarray(inputs[i : i + 100], dtype=np.float32))
        correct += int((logits.argmax(axis=1) == labels[i : i + 100]).sum())
    return correct / len(labels)


def _model_inputs(images: np.ndarray, spec: ModelSpec) -> np.ndarray:
    import torch

    from edgevit.compress.loop import to_model_input

    return to_model_input(torch.from_numpy(np.array(images, copy=True)), spec).numpy()


# ----------------------------------------------------------------------------------------------
# The whole run


def qat(
    model: str,
    data: str | os.PathLike | Dataset = "fashion-mnist",
    *,
    weights: str | os.PathLike | None = None,
    pretrained: bool = False,
    targets: Sequence[str] = QAT_TARGETS,
    epochs: int = 1,
    batch_size: int = 64,
    lr: float = 1e-4,
    freeze_observers: float = 0.6,
    teacher: str | os.PathLike | None = "float",
    temperature: float = 2.0,
    alpha: float = 0.5,
    compare_ptq: bool = True,
    calibration_images: int = 256,
    rewrite: bool = True,
    seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    out: str | os.PathLike = "edgevit-qat",
    force: bool = False,
    threads: int | None = None,
    progress: bool = False,
    on_epoch_end: Any = None,
) -> QATResult:
    """QAT-fine-tune catalog model ``model`` for each of ``targets``, export the int8 artifacts to
    ``out`` (``<model>_<target>_int8_qat<suffix>``) and, with ``compare_ptq``, the PT2E
    post-training-quantized artifacts of the same float model (``..._int8_ptq``).

    ``teacher="float"`` distils from the float model during QAT (``alpha`` soft, ``1 - alpha``
    labels); ``None`` trains on labels alone; a catalog name or checkpoint uses that teacher.
    """
    import torch
    from torchao.quantization.pt2e import allow_exported_model_train_eval, disable_observer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    from edgevit.compress.distill import Teacher, load_teacher, teacher_loss
    from edgevit.compress.loop import Hooks, LoopConfig, evaluate, fit
    from edgevit.data import Dataset, load_dataset
    from edgevit.models import create_model

    start = time.perf_counter()
    for t in targets:
        if t not in QAT_TARGETS:
            raise ConfigError(f"QAT targets are {', '.join(QAT_TARGETS)}, not {t!r}")
    if not targets:
        raise ConfigError("pass at least one QAT target")
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= freeze_observers <= 1:
        raise ConfigError(f"freeze_observers must be a fraction of the steps in [0, 1], got {freeze_observers}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    float_model = create_model(model, pretrained=pretrained, weights=weights)
    spec = float_model.edgevit_spec
    weights_tag = float_model.edgevit_weights
    paths = {(t, m): out_dir / f"{spec.slug}_{t}_int8_{m}{_SUFFIX[t]}" for t in targets
             for m in (("qat", "ptq") if compare_ptq else ("qat",))}
    for p in paths.values():
        if p.exists() and not force:
            raise OutputExistsError(p)
    ds = data if isinstance(data, Dataset) else load_dataset(data, image_size=spec.input_size, color_mode=spec.color_mode)
    if train_limit or test_limit:
        ds = ds.subset(train_limit, test_limit)
    if len(ds.train_labels) < calibration_images:
        raise DataError(f"{ds.name}: {len(ds.train_labels)} training images, fewer than calibration_images={calibration_images}")
    threads = threads or os.cpu_count() or 1
    float_top1, _ = evaluate(float_model, ds.test_images, ds.test_labels, spec)
    test_inputs = _model_inputs(ds.test_images, spec)
    test_labels = np.asarray(ds.test_labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    calib_idx = np.sort(rng.choice(len(ds.train_labels), size=calibration_images, replace=False))
    calib_inputs = _model_inputs(ds.train_images[calib_idx], spec)
    example = torch.from_numpy(test_inputs[:1].copy())

    tch = None
    if teacher == "float":
        frozen = copy.deepcopy(float_model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        tch = Teacher(name=spec.name, model=frozen, spec=spec, weights=weights_tag)
    elif teacher is not None:
        tch = load_teacher(teacher)

    artifacts: list[QATArtifact] = []
    history: dict[str, list[Any]] = {}
    warnings: list[str] = []
    for target in targets:
        edge = prepare_float(float_model, target, rewrite)
        graph, batched = _export_graph(edge, example)
        if not batched:
            raise ConversionError(f"{model} does not export with a dynamic batch; QAT needs batched training")

        if compare_ptq:
            t0 = time.perf_counter()
            quantizer = make_quantizer(target, qat=False, model=edge)
            prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
            _forward_batches(prepared, calib_inputs, batched)
            converted = _eval_mode(convert_pt2e(prepared, fold_quantize=target != "tflite"))
            path = paths[(target, "ptq")]
            details = quantize_and_export(converted, quantizer, target, example, path, spec, weights_tag, "ptq",
                                          {"calibration_images": calibration_images, "observer": "histogram"})
            top1 = evaluate_artifact(path, test_inputs, test_labels)
            artifacts.append(QATArtifact(target, "ptq", str(path), path.stat().st_size, top1,
                                         time.perf_counter() - t0, details))

        t0 = time.perf_counter()
        quantizer = make_quantizer(target, qat=True, model=edge)
        torch.manual_seed(seed)
        prepared = prepare_qat_pt2e(copy.deepcopy(graph), quantizer)
        allow_exported_model_train_eval(prepared)
        params = [p for p in prepared.parameters() if p.requires_grad]
        frozen_at: list[int] = []

        def on_step(step: int, total: int, _prepared=prepared, _frozen=frozen_at) -> None:
            if not _frozen and step >= round(freeze_observers * total):
                _prepared.apply(disable_observer)
                _frozen.append(step)

        if freeze_observers == 0:
            prepared.apply(disable_observer)
            frozen_at.append(0)
        loop = LoopConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=0.0, warmup_epochs=0.1,
                          augment="auto", seed=seed, threads=threads, progress=progress,
                          desc=f"QAT {spec.name} ({target})")
        hooks = Hooks(loss=teacher_loss(tch, temperature, alpha if tch is not None else 0.0), on_step=on_step,
                      on_epoch_end=on_epoch_end, params=[{"params": params, "weight_decay": 0.0}])
        hist = fit(prepared, ds, loop, hooks, spec=spec)
        history[target] = hist
        prepared.eval()
        converted = _eval_mode(convert_pt2e(prepared, fold_quantize=target != "tflite"))
        path = paths[(target, "qat")]
        details = quantize_and_export(
            converted, quantizer, target, example, path, spec, weights_tag, "qat",
            {"epochs": epochs, "lr": lr, "train_images": len(ds.train_labels), "observers_frozen_at_step": frozen_at[0]
             if frozen_at else None, "teacher": tch.name if tch else None, "temperature": temperature,
             "alpha": alpha if tch else 0.0},
        )
        details["fake_quant_top1"] = hist[-1].test_top1
        top1 = evaluate_artifact(path, test_inputs, test_labels)
        artifacts.append(QATArtifact(target, "qat", str(path), path.stat().st_size, top1, time.perf_counter() - t0,
                                     details))
    return QATResult(model=spec.name, dataset=ds.name, float_top1=float_top1, artifacts=tuple(artifacts),
                     history=history, seconds=time.perf_counter() - start, warnings=tuple(warnings))
