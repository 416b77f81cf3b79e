"""Post-training quantization shared by the targets: settings, calibration split, the ViT-aware
mixed-precision search, fidelity metrics, and the report every quantized export carries.

What is target-independent lives here; each converter supplies the target-specific parts:

* an inventory of its quantizable ops as :class:`QuantOp` (an id the target understands, the op
  type, a *role* from :data:`ROLES`, the torch module it came from);
* ``evaluate(kept)``: the logits, on the search images, of the model quantized with every op in
  the groups named in ``kept`` held at higher precision and everything else at int8.

The ViT-aware recipe
--------------------
ViTs lose accuracy under naive W8A8 because a few places carry ranges int8 cannot hold: softmax
outputs (mostly tiny values next to a few near 1), LayerNorm internals (variance, rsqrt),
residual adds (the residual stream grows outlier channels), and the linears that read those
outliers. The recipe, against the naive one (every op int8, the tool's default calibration):

1. *float by design*: each target keeps float the ops that are both range-sensitive and without
   a fast int8 kernel on its runtime (softmax, layer norm, GELU, activation x activation matmuls;
   the model's input/output tensors on TFLite). This is also what makes int8 fast: on TFLite's
   XNNPACK, DeiT-Tiny all-int8 runs *slower* than fp32 (50 vs 30 ms), with these float 2x faster;
2. *ranges*: activation ranges are the global min/max over the calibration images (no clipping of
   the outlier channels ViTs depend on), where the tool's default would clip;
3. *search* (:func:`search_mix`): quantize the rest and measure fidelity on held-out images;
   stop if the target is met. Otherwise measure each candidate group's *sensitivity* (by role:
   residual adds, element-wise ops; per layer: the stem, the head and the linears whose input has
   the strongest outlier channels, found from the float model's activations) as the error with
   all but that group int8; keep groups out of int8, most harmful first, until the target is met;
   then drop any kept group the target does not need.

The target is ``max_drop`` top-1 points against the float model on labelled images together with
``min_agreement`` (the share of images whose top-1 class stays the float model's), or
``min_cosine`` (mean cosine similarity of logits) where the images carry no labels. A target the
search cannot meet is an error naming the numbers and the options, never a silent fallback.
"""

from __future__ import annotations

import re

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgevit.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from edgevit.data.calibration import CalibrationSet
    from edgevit.metadata import ArtifactMetadata

__all__ = [
    "QUANT_OPTIONS",
    "RECIPES",
    "ROLES",
    "Fidelity",
    "FidelityTarget",
    "OpGroup",
    "QuantOp",
    "QuantSettings",
    "SearchResult",
    "SwitchedGraph",
    "build_groups",
    "compare_latency",
    "fidelity",
    "linear_outlier_scores",
    "load_quant_data",
    "quiet_tools",
    "search_mix",
    "torch_threads",
]

RECIPES = ("vit-aware", "naive")

# Converter options understood by every quantizing target (``--option key=value``).
QUANT_OPTIONS: dict[str, Any] = {
    "recipe": "vit-aware",  # vit-aware | naive
    "max_drop": 1.0,  # top-1 points vs float on labelled calibration images
    "min_cosine": 0.99,  # mean logit cosine vs float, where the images carry no labels
    "min_agreement": 0.98,  # with labels, also: top-1 agreement with the float model (0 turns it off)
    "calibration_images": 64,  # images that set the activation ranges
    "search_images": 256,  # further held-out images that judge the recipe (0: reuse calibration)
    "keep": "float",  # precision of the ops the search keeps out of int8: float | int16
    "fallback": False,  # opt-in: keep op types whose int8 kernels fail in float (recorded)
    "compare_fp32": True,  # size of the fp32 artifact of the same run (and its latency, with speed_check)
    "speed_check": True,  # time the artifact against its fp32 twin on this host (converters/_speed.py)
}

ROLES = ("softmax", "norm", "residual_add", "attention_matmul", "activation", "gate", "elementwise", "linear", "other")

# The ViT prior: which roles are known to break under int8, most harmful first. It orders
# groups whose measured sensitivity ties and is recorded with the recipe.
_PRIOR = ("softmax", "norm", "residual_add", "linear", "attention_matmul", "activation", "gate", "elementwise")


@dataclass(frozen=True)
class QuantSettings:
    """The quantization options of one export, validated (see :data:`QUANT_OPTIONS`)."""

    recipe: str = "vit-aware"
    max_drop: float = 1.0
    min_cosine: float = 0.99
    min_agreement: float = 0.98
    calibration_images: int = 64
    search_images: int = 256
    keep: str = "float"
    fallback: bool = False
    compare_fp32: bool = True
    speed_check: bool = True

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown quantization recipe {self.recipe!r}; choose one of: {', '.join(RECIPES)}")
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop <= 100):
            raise ConfigError(f"max_drop is in top-1 points, 0..100; got {self.max_drop!r}")
        if not (isinstance(self.min_cosine, (int, float)) and 0 < self.min_cosine <= 1):
            raise ConfigError(f"min_cosine must be in (0, 1]; got {self.min_cosine!r}")
        if not (isinstance(self.min_agreement, (int, float)) and 0 <= self.min_agreement <= 1):
            raise ConfigError(f"min_agreement is a fraction of images, 0..1 (0 turns it off); got {self.min_agreement!r}")
        if not (isinstance(self.calibration_images, int) and self.calibration_images >= 1):
            raise ConfigError(f"calibration_images must be an integer >= 1; got {self.calibration_images!r}")
        if not (isinstance(self.search_images, int) and self.search_images >= 0):
            raise ConfigError(f"search_images must be an integer >= 0; got {self.search_images!r}")
        if self.keep not in ("float", "int16"):
            raise ConfigError(f"keep must be 'float' or 'int16' (the precision of ops kept out of int8); got {self.keep!r}")
        for name in ("fallback", "compare_fp32", "speed_check"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false; got {getattr(self, name)!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any], supported_keep: Sequence[str] = ("float",)) -> QuantSettings:
        """Settings from a converter's merged options; ``supported_keep`` lists the ``keep``
        precisions the target can express."""
        known = {k: options[k] for k in QUANT_OPTIONS if k in options}
        settings = cls(**known)
        if settings.keep not in supported_keep:
            raise ConfigError(
                f"keep={settings.keep} is not available on this target; supported: {', '.join(supported_keep)}"
            )
        return settings

    def target(self, labelled: bool) -> FidelityTarget:
        if labelled:
            return FidelityTarget(self.max_drop, None, self.min_agreement or None)
        return FidelityTarget(None, self.min_cosine)


# ----------------------------------------------------------------------------------------------
# Ops and groups


@dataclass(frozen=True)
class QuantOp:
    """One quantizable op as a target sees it."""

    id: str  # the target's handle: a TFLite op's scope, an FX node name
    kind: str  # the op type in the target's words (SOFTMAX, aten.linear.default)
    role: str  # one of ROLES
    module: str = ""  # torch module path it came from ("blocks.3.mlp.fc2"); "" if unknown


@dataclass(frozen=True)
class OpGroup:
    """Ops that the search keeps at higher precision together."""

    name: str  # "softmax", "norm", "residual_add", ..., or "linear:blocks.3.mlp.fc2"
    role: str
    op_ids: tuple[str, ...]
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"group": self.name, "role": self.role, "ops": len(self.op_ids)}
        if self.why:
            d["why"] = self.why
        return d


def role_of_module(cls_name: str) -> str | None:
    """The role every op inside a module of this class plays, if the class decides it."""
    name = cls_name.rsplit(".", 1)[-1].lower()
    # LayerNorm, LayerNorm2d, GroupNorm, BatchNorm(Act)2d, RMSNorm; not composites that merely
    # contain a norm (timm's ConvNormAct: its convolution is a linear layer, and int8's bulk)
    # (edgevit's LinearMeanLayerNorm / ConvMeanLayerNorm2d are norms: the name ends in one)
    if re.search(r"(layer|batch|group|rms|instance)norm(act)?(\d+d)?$", name) or (
            "norm" in name and not any(w in name for w in ("conv", "linear", "block", "attn", "attention", "mlp"))):
        return "norm"
    if name in ("softmax",):
        return "softmax"
    if name in ("gelu", "silu", "hardswish", "relu", "relu6", "sigmoid", "tanh", "mish", "quickgelu"):
        return "activation"
    return None


def linear_outlier_scores(model: nn.Module, inputs: np.ndarray, batch: int = 32, limit: int = 32) -> dict[str, float]:
    """Per linear/conv module: how strongly its input is dominated by outlier channels.

    Score = max over channels of the channel's max |x| / median of the channels' max |x|, on
    (up to ``limit``) calibration images through the float model. A per-tensor int8 scale is set
    by the largest channel, so a score of 20 leaves the typical channel ~6 of 256 levels.
    """
    import torch
    from torch import nn

    stats: dict[str, torch.Tensor] = {}

    def hook(name: str, channel_dim: int):
        def fn(_mod, args, _out):
            x = args[0]
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
                return
            dim = channel_dim % x.dim()
            reduce = [d for d in range(x.dim()) if d != dim]
            amax = x.detach().abs().amax(dim=reduce).float()
            stats[name] = torch.maximum(stats[name], amax) if name in stats and stats[name].shape == amax.shape else amax

        return fn

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_hook(hook(name, -1)))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            handles.append(mod.register_forward_hook(hook(name, 1)))
    try:
        with torch.no_grad():
            data = torch.from_numpy(np.ascontiguousarray(inputs[:limit]))
            for i in range(0, len(data), batch):
                try:
                    model(data[i : i + batch])
                except Exception:  # a graph traced for batch 1: feed images one by one
                    for j in range(i, min(i + batch, len(data))):
                        model(data[j : j + 1])
    finally:
        for h in handles:
            h.remove()
    scores = {}
    for name, amax in stats.items():
        med = float(amax.median())
        scores[name] = float(amax.max()) / med if med > 0 else float("inf") if float(amax.max()) > 0 else 1.0
    return scores


def build_groups(ops: Sequence[QuantOp], outlier_scores: Mapping[str, float] | None = None,
                 max_linears: int | None = None) -> list[OpGroup]:
    """Candidate groups for the search: one per role present, plus single-layer groups for the
    stem (first linear/conv), the head (last) and the linears with the strongest input outliers
    (at most ``max_linears``, default ~1/6 of them, at least 2)."""
    groups: list[OpGroup] = []
    by_role: dict[str, list[QuantOp]] = {}
    for op in ops:
        by_role.setdefault(op.role, []).append(op)
    whys = {
        "softmax": "attention probabilities: a few values near 1 beside many near 0",
        "norm": "LayerNorm internals (mean, variance, rsqrt) on the outlier-heavy residual stream",
        "residual_add": "residual stream with outlier channels",
        "attention_matmul": "activation x activation products (Q.K^T, P.V)",
        "activation": "non-linear activations (GELU, ...)",
        "gate": "sigmoid-family activations of the conv stages (SiLU's sigmoid, hard-swish)",
        "elementwise": "element-wise multiplies (scales, gates)",
    }
    for role in _PRIOR:
        if role != "linear" and by_role.get(role):
            groups.append(OpGroup(role, role, tuple(op.id for op in by_role[role]), whys.get(role, "")))
    linears = by_role.get("linear", [])
    if linears:
        per_module: dict[str, list[QuantOp]] = {}
        for op in linears:
            per_module.setdefault(op.module or op.id, []).append(op)
        modules = list(per_module)
        chosen: dict[str, str] = {modules[0]: "first layer (stem / patch embedding)", modules[-1]: "last layer (classifier head)"}
        scores = dict(outlier_scores or {})
        k = max_linears if max_linears is not None else max(2, math.ceil(len(modules) / 6))
        ranked = sorted((m for m in modules if m in scores), key=lambda m: -scores[m])
        for m in ranked[:k]:
            if m not in chosen:
                chosen[m] = f"input outlier ratio {scores[m]:.1f}"
        for m in modules:  # keep graph order
            if m in chosen:
                groups.append(OpGroup(f"linear:{m}", "linear", tuple(op.id for op in per_module[m]), chosen[m]))
    return groups


# ----------------------------------------------------------------------------------------------
# Fidelity


@dataclass(frozen=True)
class Fidelity:
    """A candidate's logits against the float model's on the same images."""

    images: int
    top1_agreement: float
    cosine_mean: float
    cosine_min: float
    rel_error: float  # mean over images of ||q - f||^2 / ||f||^2
    top1: float | None = None  # accuracy on the labels, when there are labels
    float_top1: float | None = None

    @property
    def drop(self) -> float | None:
        """Top-1 points lost against the float model (negative: gained)."""
        if self.top1 is None or self.float_top1 is None:
            return None
        return 100.0 * (self.float_top1 - self.top1)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "images": self.images,
            "top1_agreement": round(self.top1_agreement, 5),
            "cosine_mean": round(self.cosine_mean, 6),
            "cosine_min": round(self.cosine_min, 6),
            "rel_error": float(f"{self.rel_error:.4g}"),
        }
        if self.top1 is not None:
            d.update(top1=round(self.top1, 5), float_top1=round(self.float_top1 or 0.0, 5), drop_points=round(self.drop or 0.0, 3))
        return d

    def summary(self) -> str:
        s = f"cosine {self.cosine_mean:.5f}, top-1 agreement {self.top1_agreement:.1%}"
        if self.top1 is not None:
            s += f", top-1 {self.top1:.2%} vs float {self.float_top1:.2%} (drop {self.drop:+.2f} pts)"
        return s + f" on {self.images} images"


def fidelity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> Fidelity:
    """Compare (n, classes) logits of a candidate with the float reference (and the labels)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    cand = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape} vs candidate {cand.shape}")
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cos = (ref * cand).sum(1) / np.maximum(norms, 1e-12)
    rel = ((ref - cand) ** 2).sum(1) / np.maximum((ref**2).sum(1), 1e-12)
    top1 = float_top1 = None
    if labels is not None:
        top1 = float((cand.argmax(1) == labels).mean())
        float_top1 = float((ref.argmax(1) == labels).mean())
    return Fidelity(
        images=len(ref),
        top1_agreement=float((ref.argmax(1) == cand.argmax(1)).mean()),
        cosine_mean=float(cos.mean()),
        cosine_min=float(cos.min()),
        rel_error=float(rel.mean()),
        top1=top1,
        float_top1=float_top1,
    )


@dataclass(frozen=True)
class FidelityTarget:
    """``max_drop`` top-1 points on labelled images (and, if set, ``min_agreement``: the share of
    images whose top-1 class stays the float model's), else ``min_cosine`` mean cosine."""

    max_drop: float | None = None
    min_cosine: float | None = None
    min_agreement: float | None = None

    def met(self, f: Fidelity) -> bool:
        if self.max_drop is not None and f.drop is not None:
            agrees = self.min_agreement is None or f.top1_agreement >= self.min_agreement - 1e-9
            return f.drop <= self.max_drop + 1e-9 and agrees
        return f.cosine_mean >= (self.min_cosine if self.min_cosine is not None else 0.99)

    def describe(self) -> str:
        if self.max_drop is not None:
            agree = f" and top-1 agreement >= {self.min_agreement:.1%}" if self.min_agreement is not None else ""
            return f"top-1 drop <= {self.max_drop:g} points{agree} vs float on labelled held-out images"
        return f"mean logit cosine >= {self.min_cosine:g} vs float (no labels)"

    def to_dict(self) -> dict[str, Any]:
        if self.max_drop is None:
            return {"min_cosine": self.min_cosine}
        return {"max_drop": self.max_drop, **({"min_agreement": self.min_agreement} if self.min_agreement is not None else {})}


# ----------------------------------------------------------------------------------------------
# The search


@dataclass
class SearchResult:
    """The chosen mix and how it was found."""

    kept: tuple[str, ...]  # group names held at higher precision, most harmful first
    base: Fidelity  # the starting mix: every candidate group int8
    final: Fidelity
    met: bool
    target: FidelityTarget
    sensitivity: list[tuple[str, Fidelity]] = field(default_factory=list)
    steps: list[tuple[tuple[str, ...], Fidelity]] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kept": list(self.kept),
            "target": self.target.to_dict(),
            "met": self.met,
            "base": self.base.to_dict(),
            "final": self.final.to_dict(),
            "sensitivity": [
                {"group": g, "rel_error": float(f"{f.rel_error:.4g}"), "cosine_mean": round(f.cosine_mean, 6),
                 **({"drop_points": round(f.drop, 3)} if f.drop is not None else {})}
                for g, f in self.sensitivity
            ],
            "steps": [{"kept": list(k), **f.to_dict()} for k, f in self.steps],
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 2),
        }


def search_mix(
    groups: Sequence[OpGroup],
    evaluate: Callable[[frozenset[str], int], np.ndarray],
    reference: np.ndarray,
    labels: np.ndarray | None,
    target: FidelityTarget,
    sensitivity_images: int = 64,
    log: Callable[[str], None] | None = None,
) -> SearchResult:
    """Find a small set of groups to hold at higher precision so that ``target`` is met.

    ``evaluate(kept, n)`` returns the quantized candidate's logits on the first ``n`` search
    images (the rows of ``reference``, the float logits). Sensitivity is ranked on the first
    ``sensitivity_images`` rows by relative logit error (smooth where top-1 is not); the target
    is always checked on all rows. See the module docstring for the steps.
    """
    start = time.perf_counter()
    n_all = len(reference)
    n_sens = min(n_all, max(1, sensitivity_images))
    logits: dict[frozenset[str], np.ndarray] = {}
    counter = [0]

    def run(kept: Sequence[str], n: int) -> np.ndarray:
        key = frozenset(kept)
        if key not in logits or len(logits[key]) < n:
            counter[0] += 1
            logits[key] = np.asarray(evaluate(key, n))
        return logits[key][:n]

    def measure(kept: Sequence[str]) -> Fidelity:
        f = fidelity(reference, run(kept, n_all), labels)
        if log:
            log(f"  keep {sorted(kept) or 'nothing'}: {f.summary()}")
        return f

    base = measure(())
    result = SearchResult((), base, base, target.met(base), target)
    if result.met or not groups:
        result.evaluations, result.seconds = counter[0], time.perf_counter() - start
        return result

    # Sensitivity: the error with everything int8 except this group.
    sub_ref = reference[:n_sens]
    base_sub = fidelity(sub_ref, run((), n_sens))
    sens = [(g.name, fidelity(sub_ref, run([g.name], n_sens))) for g in groups]
    prior = {g.name: _PRIOR.index(g.role) if g.role in _PRIOR else len(_PRIOR) for g in groups}
    ranked = sorted(sens, key=lambda gf: (gf[1].rel_error, prior[gf[0]]))
    result.sensitivity = ranked
    # Only groups whose higher precision measurably helps are candidates.
    helpful = [g for g, f in ranked if f.rel_error < base_sub.rel_error * 0.98]

    kept: list[str] = []
    current = base
    # The groups that help first; if the target is still unmet (top-1 agreement can hinge on a few
    # near-ties that no single group decides), the remaining groups, most sensitive first.
    for g in helpful + [g for g, _ in ranked if g not in helpful]:
        kept.append(g)
        current = measure(kept)
        result.steps.append((tuple(kept), current))
        if target.met(current):
            break
    if target.met(current):
        # Prune: drop groups (least harmful first) that the target does not need.
        for g in list(reversed(kept[:-1])):
            trial = [k for k in kept if k != g]
            f = measure(trial)
            if target.met(f):
                kept, current = trial, f
                result.steps.append((tuple(kept), current))
    result.kept, result.final, result.met = tuple(kept), current, target.met(current)
    result.evaluations, result.seconds = counter[0], time.perf_counter() - start
    return result


class SwitchedGraph:
    """A simulation graph (``torch.fx.GraphModule``) whose numerics are set by on/off switch
    modules (fake-quantizers with an ``enabled`` flag), evaluated for many switch states on the
    same images: the search's sensitivity pass (every candidate group float in turn).

    Activations before the first switch a state changes are those of the base state on the same
    images: :meth:`run` resumes there (``torch.fx.Interpreter`` with the base run's live values
    filled in) instead of running the whole graph; on average a candidate then costs about half a
    forward pass. :meth:`record` runs the base state once and keeps the live values at the given
    cut points; the values are the same tensors a full run computes (same ops, same order).
    """

    def __init__(self, module: Any, switches: Sequence[Any]) -> None:
        self.module, self.switches = module, list(switches)
        self.nodes = list(module.graph.nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        first: dict[int, int] = {}
        for i, node in enumerate(self.nodes):
            if node.op == "call_module":
                first.setdefault(id(module.get_submodule(node.target)), i)
        self.position = [first.get(id(s), len(self.nodes)) for s in self.switches]
        self.base: tuple[bool, ...] | None = None
        self.inputs: Any = None
        self.saved: dict[int, dict] = {}

    def set(self, states: Sequence[bool]) -> None:
        for switch, on in zip(self.switches, states):
            switch.enabled = bool(on)

    def cut(self, states: Sequence[bool]) -> int | None:
        """The graph position of the first switch whose state differs from the base's (None: same)."""
        if self.base is None:
            return None
        diff = [p for p, a, b in zip(self.position, states, self.base) if bool(a) != bool(b)]
        return min(diff) if diff else None

    def _live(self, cut: int) -> list:
        return [n for n in self.nodes[:cut] if any(self.index[u] >= cut for u in n.users)]

    def record(self, base: Sequence[bool], inputs: Any, candidates: Sequence[Sequence[bool]]) -> Any:
        """Run ``base`` on ``inputs`` (one batch tensor), keeping the live values at the cut of each
        candidate state; returns the output."""
        import torch

        self.base, self.inputs, self.saved = tuple(bool(b) for b in base), inputs, {}
        cuts = {c for c in (self.cut(s) for s in candidates) if c is not None}
        live = {c: self._live(c) for c in cuts}
        saved, index = self.saved, self.index

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):  # noqa: ANN001
                i = index[n]
                if i in live:
                    saved[i] = {m: self.env[m] for m in live[i]}
                return super().run_node(n)

        self.set(self.base)
        with torch.no_grad():
            return Recorder(self.module).run(inputs)

    def run(self, states: Sequence[bool], inputs: Any) -> Any | None:
        """The output for ``states`` on the recorded inputs, resumed at its cut; None when the
        inputs are not the recorded ones or its cut was not recorded (run the graph instead)."""
        import torch

        cut = self.cut(states)
        if inputs is not self.inputs or cut is None or cut not in self.saved:
            return None
        env = dict.fromkeys(self.nodes[:cut])  # values dead before the cut are never read again
        env.update(self.saved[cut])
        self.set(states)
        with torch.no_grad():
            return torch.fx.Interpreter(self.module).run(inputs, initial_env=env)


# ----------------------------------------------------------------------------------------------
# Calibration data, timing, quiet tools


def load_quant_data(calibration: Any, metadata: ArtifactMetadata, settings: QuantSettings,
                    progress: bool | None = None) -> tuple[CalibrationSet, CalibrationSet, str]:
    """(calibration images, held-out search images, note) from the user's ``--calibration``.

    The first ``calibration_images`` set the ranges; the next ``search_images`` judge the recipe
    and give the reported accuracy. A source too small for both is used for both (said in note).
    """
    from edgevit.data.calibration import load_calibration

    data = load_calibration(calibration, metadata, settings.calibration_images + settings.search_images, progress)
    n_cal = min(settings.calibration_images, len(data))
    calib = data.take(0, n_cal)
    rest = data.take(n_cal)
    if settings.search_images == 0 or len(rest) < 16:
        note = "fidelity judged on the calibration images (too few images to hold some out)" if settings.search_images else ""
        return calib, calib, note
    return calib, rest, ""


def compare_latency(artifacts: Mapping[str, Any], runtime: str, example: np.ndarray, runs: int = 20,
                    warmup: int = 3, threads: int | None = None) -> dict[str, float]:
    """Median latency (ms) of each artifact, measured interleaved in one run so that machine load
    hits all alike. ``artifacts`` maps a label to a path."""
    from edgevit.runtimes import load

    loaded = {label: load(path, runtime=runtime, threads=threads) for label, path in artifacts.items()}
    times: dict[str, list[float]] = {label: [] for label in loaded}
    for _ in range(warmup):
        for rt in loaded.values():
            rt.run(example)
    for _ in range(runs):
        for label, rt in loaded.items():
            t = time.perf_counter()
            rt.run(example)
            times[label].append((time.perf_counter() - t) * 1000.0)
    return {label: float(np.median(v)) for label, v in times.items()}


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch on ``n`` threads for the duration (restored after). The host-side passes here
    (calibration, simulation) are small batched forwards; on a busy machine OpenMP's spinning
    threads make them 10x slower with 2 threads than with one (measured on 2 shared cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def quiet_tools() -> Iterator[io.StringIO]:
    """Silence the quantization tools' own progress bars and log lines (Python-level stderr and
    absl logging) for the duration; yields what they wrote, for error messages."""
    buffer = io.StringIO()
    try:
        from absl import logging as absl_logging

        level = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        absl_logging, level = None, None
    try:
        with contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        if absl_logging is not None:
            absl_logging.set_verbosity(level)


def report(precision: str, scheme: str, tool: str, settings: QuantSettings | None = None, *,
           calibration: Mapping[str, Any] | None = None, groups: Sequence[OpGroup] = (),
           search: SearchResult | None = None, evaluation: Fidelity | None = None, naive: Fidelity | None = None,
           fixed_float: Sequence[str] = (), fallbacks: Sequence[str] = ()) -> dict[str, Any]:
    """The quantization section of an export's details (the artifact's metadata gets
    :func:`metadata_summary` of it)."""
    out: dict[str, Any] = {"precision": precision, "scheme": scheme, "tool": tool}
    if settings is not None and precision == "int8":
        out["recipe"] = settings.recipe
        out["keep"] = settings.keep
    if calibration:
        out["calibration"] = dict(calibration)
    if search is not None:
        by_name = {g.name: g for g in groups}
        out["mix"] = {
            "int8": "all other quantizable ops",
            settings.keep if settings else "float": [by_name[k].to_dict() if k in by_name else {"group": k} for k in search.kept],
        }
        out["search"] = search.to_dict()
        out["candidates"] = [g.to_dict() for g in groups]
    if naive is not None:
        out["naive"] = naive.to_dict()
    if fixed_float:
        out["float_by_design"] = list(fixed_float)
    if evaluation is not None:
        out["evaluation"] = evaluation.to_dict()
    if fallbacks:
        out["fallbacks"] = list(fallbacks)
    return out


def metadata_summary(section: Mapping[str, Any]) -> dict[str, Any]:
    """The compact part of a quantization report that travels inside the artifact."""
    keep = ("precision", "scheme", "tool", "recipe", "keep", "calibration", "float_by_design", "fallbacks")
    out = {k: section[k] for k in keep if k in section}
    if "mix" in section:
        kept_key = next(k for k in section["mix"] if k != "int8")
        out["kept_out_of_int8"] = {kept_key: [g["group"] for g in section["mix"][kept_key]]}
    if "search" in section:
        s = section["search"]
        out["target"] = s["target"]
        out["target_met"] = s["met"]
        out["fidelity"] = s["final"]
    if "naive" in section:
        out["naive_fidelity"] = section["naive"]
    elif "evaluation" in section:
        out["fidelity"] = section["evaluation"]
    return out


def add_size_and_latency(section: dict[str, Any], fp32_bytes: int | None, q_bytes: int,
                         latency: Mapping[str, float] | None) -> None:
    """Record size (and latency) against the fp32 artifact of the same run."""
    if fp32_bytes:
        section["size"] = {"fp32_bytes": fp32_bytes, "bytes": q_bytes, "ratio": round(q_bytes / fp32_bytes, 4)}
    if latency and "fp32" in latency and "quantized" in latency:
        section["latency_ms"] = {
            "fp32": round(latency["fp32"], 3),
            "quantized": round(latency["quantized"], 3),
            "speedup": round(latency["fp32"] / latency["quantized"], 3) if latency["quantized"] > 0 else None,
            "note": "median of interleaved runs in one process, batch 1",
        }


def summary_lines(section: Mapping[str, Any]) -> list[str]:
    """Human lines for the export report."""
    lines = []
    head = f"quantization: {section.get('scheme', section.get('precision'))}"
    if "recipe" in section:
        head += f", recipe {section['recipe']}"
    lines.append(head)
    if "mix" in section:
        kept_key = next(k for k in section["mix"] if k != "int8")
        kept = [g["group"] for g in section["mix"][kept_key]]
        lines.append(f"  kept in {kept_key}: {', '.join(kept) if kept else 'nothing (all int8)'}")
    if "naive" in section:
        naive = section["naive"]
        lines.append("  naive int8 (for contrast): " + (f"does not run ({naive['error'][:120]})" if "error" in naive
                                                          else _fid_line(naive)))
    if "search" in section:
        s = section["search"]
        lines.append(f"  chosen mix: {_fid_line(s['final'])} ({'target met' if s['met'] else 'target NOT met'})")
    elif "evaluation" in section:
        lines.append(f"  fidelity: {_fid_line(section['evaluation'])}")
    if "size" in section:
        z = section["size"]
        lines.append(f"  size {z['bytes']:,} B = {z['ratio']:.1%} of fp32 ({z['fp32_bytes']:,} B)")
    if "latency_ms" in section:
        t = section["latency_ms"]
        lines.append(f"  latency {t['quantized']:.2f} ms vs fp32 {t['fp32']:.2f} ms ({t['speedup']:.2f}x, same run)")
    return lines


def _fid_line(d: Mapping[str, Any]) -> str:
    s = f"cosine {d['cosine_mean']:.5f}, agreement {d['top1_agreement']:.1%}"
    if "top1" in d:
        s += f", top-1 {d['top1']:.2%} vs float {d['float_top1']:.2%} (drop {d['drop_points']:+.2f})"
    return s + f", {d['images']} images"
