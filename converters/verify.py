"""Verification: an exported artifact against the float torch model, on real images.

Metrics per image: top-1 agreement, cosine similarity of the logits, max abs difference.
Tolerances are per precision (:data:`TOLERANCES`); fp32 is strict, reduced precisions are
judged by agreement and cosine. An image whose float top-1/top-2 margin is smaller than twice
the observed max abs difference is a numerical tie and does not count as a disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgevit.metadata import ArtifactMetadata
from edgevit.preprocess import preprocess

__all__ = ["TOLERANCES", "Tolerance", "tolerance_for", "VerificationReport", "compare_logits", "reference_logits", "verify_runtime"]


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float
    min_top1_agreement: float
    max_abs_rel: float | None = None  # max |diff| / max |reference logit|

    def describe(self) -> str:
        s = f"cosine >= {self.min_cosine}, top-1 agreement >= {self.min_top1_agreement:.1%}"
        if self.max_abs_rel is not None:
            s += f", max abs diff <= {self.max_abs_rel:g} x max|logit|"
        return s


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(min_cosine=0.9999, min_top1_agreement=1.0, max_abs_rel=1e-3),
    "fp16": Tolerance(min_cosine=0.999, min_top1_agreement=0.995),
    "int8-dynamic": Tolerance(min_cosine=0.98, min_top1_agreement=0.9),
    "int8": Tolerance(min_cosine=0.97, min_top1_agreement=0.9),
}


@dataclass
class VerificationReport:
    precision: str
    tolerance: Tolerance
    images: list[str]
    top1_agreement: float
    cosine_min: float
    cosine_mean: float
    max_abs_diff: float
    max_abs_logit: float
    disagreements: list[str] = field(default_factory=list)
    ties: list[str] = field(default_factory=list)
    passed: bool = True
    ran: bool = True
    note: str = ""

    @property
    def n_images(self) -> int:
        return len(self.images)

    def summary(self) -> str:
        if not self.ran:
            return f"not run: {self.note}"
        status = "PASS" if self.passed else "FAIL"
        ties = f" ({len(self.ties)} near-tie(s) of the float model not counted)" if self.ties else ""
        return (
            f"{status} on {self.n_images} real images: top-1 agreement {self.top1_agreement:.1%}{ties}, "
            f"cosine min {self.cosine_min:.6f}, max abs diff {self.max_abs_diff:.3g} "
            f"(max |logit| {self.max_abs_logit:.3g}); tolerance: {self.tolerance.describe()}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ran": self.ran,
            "passed": self.passed,
            "precision": self.precision,
            "tolerance": self.tolerance.describe(),
            "n_images": self.n_images,
            "images": self.images,
            "top1_agreement": self.top1_agreement,
            "cosine_min": self.cosine_min,
            "cosine_mean": self.cosine_mean,
            "max_abs_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "disagreements": self.disagreements,
            "ties": self.ties,
            "note": self.note,
        }

    @classmethod
    def not_run(cls, precision: str, note: str) -> VerificationReport:
        return cls(precision, TOLERANCES.get(precision, TOLERANCES["fp32"]), [], 0.0, 0.0, 0.0, 0.0, 0.0,
                   passed=True, ran=False, note=note)


# A fused-input grayscale artifact computes luma in float; the reference rounds it to 8 bits
# (Pillow's convert("L")), an input difference of up to 0.5/255 that the logits inherit.
FUSED_LUMA_FP32 = Tolerance(min_cosine=0.9999, min_top1_agreement=1.0, max_abs_rel=1e-2)


def tolerance_for(precision: str, metadata: ArtifactMetadata | None = None) -> Tolerance:
    if precision == "fp32" and metadata is not None and metadata.extra.get("model_color_mode") == "L":
        return FUSED_LUMA_FP32
    return TOLERANCES[precision]


def compare_logits(
    names: Sequence[str], reference: np.ndarray, candidate: np.ndarray, precision: str,
    tolerance: Tolerance | None = None,
) -> VerificationReport:
    """Compare two (n, classes) logit arrays row by row under ``precision``'s tolerance."""
    tol = tolerance or TOLERANCES[precision]
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape} vs artifact {cand.shape}")
    diff = np.abs(ref - cand)
    max_abs = float(diff.max()) if diff.size else 0.0
    cos = (ref * cand).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1) + 1e-12)
    ref_top = ref.argmax(1)
    cand_top = cand.argmax(1)
    sorted_ref = np.sort(ref, axis=1)
    margins = sorted_ref[:, -1] - sorted_ref[:, -2] if ref.shape[1] > 1 else np.full(len(ref), np.inf)
    disagreements, ties = [], []
    for i, name in enumerate(names):
        if ref_top[i] != cand_top[i]:
            # A flip inside the numerical noise of this artifact is a tie, not a disagreement: the
            # float model itself is undecided there (random weights, photos of other classes).
            (ties if margins[i] <= 2 * diff[i].max() else disagreements).append(name)
    agreement = float((ref_top == cand_top).mean()) if len(names) else 0.0
    decisive = len(names) - len(ties)
    decisive_agreement = (decisive - len(disagreements)) / decisive if decisive else 1.0
    max_logit = float(np.abs(ref).max()) if ref.size else 0.0
    passed = float(cos.min()) >= tol.min_cosine and decisive_agreement >= tol.min_top1_agreement
    if tol.max_abs_rel is not None:
        passed = passed and max_abs <= tol.max_abs_rel * max(max_logit, 1.0)
    return VerificationReport(
        precision=precision,
        tolerance=tol,
        images=list(names),
        top1_agreement=agreement,
        cosine_min=float(cos.min()),
        cosine_mean=float(cos.mean()),
        max_abs_diff=max_abs,
        max_abs_logit=max_logit,
        disagreements=disagreements,
        ties=ties,
        passed=bool(passed),
    )


def _reference_metadata(meta: ArtifactMetadata) -> ArtifactMetadata:
    if meta.extra.get("model_color_mode") == "L":
        return meta.replace(color_mode="L", mean=meta.mean[:1], std=meta.std[:1])
    return meta


def reference_logits(model, images: Sequence, metadata: ArtifactMetadata) -> np.ndarray:
    """Float torch logits for ``images`` under the reference (unfused) preprocessing."""
    import torch

    ref_meta = metadata.replace(fused_input=False, layout="NCHW", input_dtype="float32")
    with torch.inference_mode():
        rows = [model(torch.from_numpy(preprocess(img, ref_meta))).float().numpy()[0] for img in images]
    return np.stack(rows)


def verify_runtime(runtime, model, named_images: Sequence[tuple[str, Any]], precision: str,
                   reference: ArtifactMetadata | None = None) -> VerificationReport:
    """Run ``named_images`` through a loaded runtime and the float model and compare.

    ``reference`` is the float model's own (unfused) preprocessing; by default it is derived from
    the artifact's metadata (correct unless the artifact folds a colour conversion).
    """
    names = [n for n, _ in named_images]
    images = [img for _, img in named_images]
    ref = reference_logits(model, images, reference or _reference_metadata(runtime.metadata))
    cand = np.stack([runtime.run(preprocess(img, runtime.metadata))[0] for img in images])
    return compare_logits(names, ref, cand, precision, tolerance_for(precision, runtime.metadata))
