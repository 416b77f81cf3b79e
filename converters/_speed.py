"""The speed check: an optimized artifact (fp16, int8, int8-dynamic) is timed against its fp32
twin on the export host, with the target's own runtime, before it is published.

Both figures go into the export result (``details["speed_check"]``) and into the artifact's
metadata (:attr:`edgevit.metadata.ArtifactMetadata.speed_check`), so an app or a later reader
knows what the optimization bought on the host it was made on. An artifact slower than its fp32
twin is a warning that names the likely cause (read from the graph the converter wrote) and
``edgevit export`` prints the command of the faster variant. Option ``speed_check=false`` turns
the check off (CI runners and other hosts whose timings mean nothing).

The check is short (about :data:`BUDGET_S` seconds): both artifacts are loaded, warmed up, then
run alternately (A B B A ...) at batch 1 until the budget is spent, and the medians compared. On a
busy host that is noisy; a difference within :data:`NOISE` counts as level, not slower.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["BUDGET_S", "NOISE", "SPEED_OPTIONS", "SpeedCheck", "check_option", "host_cpu", "slower_cause",
           "time_twins", "twin_path"]

SPEED_OPTIONS: dict[str, Any] = {"speed_check": True}
BUDGET_S = 2.0  # seconds of interleaved runs, after loading and warm-up
NOISE = 0.05  # a median within 5% of fp32's is level (a 2-second check on a shared host is not finer)
THREADS = 2


def check_option(options: Mapping[str, Any]) -> bool:
    """The validated ``speed_check`` option (a :class:`~edgevit.errors.ConfigError` otherwise)."""
    from edgevit.errors import ConfigError

    value = options.get("speed_check", True)
    if not isinstance(value, bool):
        raise ConfigError(f"speed_check must be true or false (false skips timing the artifact against its fp32 twin); "
                          f"got {value!r}")
    return value


def host_cpu() -> str:
    """A short description of the export host's CPU (model name, cores, int8/fp16 instruction sets)."""
    name, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name == platform.machine():
                    name = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_fp16", "asimddp", "i8mm", "fphp", "asimdhp")
    isa = [f for f in wanted if f in flags]
    return f"{name}, {os.cpu_count()} cores" + (f" ({', '.join(isa)})" if isa else "")


@dataclass(frozen=True)
class SpeedCheck:
    """An optimized artifact's median latency against its fp32 twin's, same host, same run."""

    precision: str
    runtime: str
    fp32_ms: float
    optimized_ms: float
    runs: int
    threads: int
    host: str
    cause: str = ""  # why it is slower, when it is

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.optimized_ms if self.optimized_ms > 0 else float("inf")

    @property
    def slower(self) -> bool:
        return self.optimized_ms > self.fp32_ms * (1.0 + NOISE)

    @property
    def faster_precision(self) -> str:
        return "fp32" if self.slower else self.precision

    def with_cause(self, cause: str) -> SpeedCheck:
        from dataclasses import replace

        return replace(self, cause=cause)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "precision": self.precision,
            "fp32_ms": round(self.fp32_ms, 3),
            "optimized_ms": round(self.optimized_ms, 3),
            "speedup": round(self.speedup, 3),
            "slower": self.slower,
            "faster": self.faster_precision,
            "runtime": self.runtime,
            "threads": self.threads,
            "runs": self.runs,
            "host": self.host,
            "method": f"medians of interleaved batch-1 runs on the export host ({BUDGET_S:g} s); within "
                      f"{NOISE:.0%} counts as level",
        }
        if self.cause:
            out["cause"] = self.cause
        return out

    def warning(self) -> str:
        cause = self.cause or f"the runtime's {self.precision} kernels are slower here"
        return (f"the {self.precision} artifact is slower than its fp32 twin on this host "
                f"({self.optimized_ms:.2f} ms vs {self.fp32_ms:.2f} ms, {self.speedup:.2f}x, {self.runtime}, "
                f"{self.threads} threads): {cause}. "
                f"Export --precision fp32 for speed (or keep {self.precision} for its size)")

    def summary(self) -> str:
        verdict = "SLOWER than" if self.slower else ("level with" if self.speedup < 1.0 + NOISE else "faster than")
        return (f"speed check: {self.precision} {self.optimized_ms:.2f} ms vs fp32 {self.fp32_ms:.2f} ms "
                f"({self.speedup:.2f}x, {verdict} fp32, {self.runtime}, this host)")


def twin_path(path: Path, label: str) -> Path:
    """A hidden scratch path beside ``path`` for a twin artifact (same folder: same file system)."""
    return path.with_name(f".{path.stem}.{label}-speed-check{path.suffix}")


def _medians(fp32, optimized, example: np.ndarray, budget_s: float, min_runs: int, max_runs: int) -> tuple[float, float, int]:
    """Interleaved timing of two loaded runtimes: alternate the order each round (A B, B A) so
    neither always runs on a warm cache after the other."""
    for _ in range(2):
        fp32.run(example)
        optimized.run(example)
    a: list[float] = []
    b: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < max_runs and (i < min_runs or time.perf_counter() - start < budget_s):
        order = ((fp32, a), (optimized, b)) if i % 2 == 0 else ((optimized, b), (fp32, a))
        for rt, bucket in order:
            t = time.perf_counter()
            rt.run(example)
            bucket.append((time.perf_counter() - t) * 1000.0)
        i += 1
    return float(np.median(a)), float(np.median(b)), i


def time_twins(fp32: Path, optimized: Path, runtime: str, precision: str, example: np.ndarray, *,
               budget_s: float = BUDGET_S, threads: int = THREADS, min_runs: int = 5, max_runs: int = 200,
               cause: Callable[[], str] | None = None) -> SpeedCheck:
    """Load both artifacts with ``runtime`` and time them interleaved on ``example`` (batch 1).

    ``cause`` is asked for a reason only when the optimized artifact turns out slower."""
    from edgevit.runtimes import load

    a = load(fp32, runtime=runtime, threads=threads)
    b = load(optimized, runtime=runtime, threads=threads)
    x = np.ascontiguousarray(example)
    fp32_ms, optimized_ms, runs = _medians(a, b, x, budget_s, min_runs, max_runs)
    check = SpeedCheck(precision, runtime, fp32_ms, optimized_ms, runs, threads, host_cpu())
    if check.slower and cause is not None:
        check = check.with_cause(cause())
    return check


# ----------------------------------------------------------------------------------------------
# Why an artifact is slower: read from what the converter wrote.

_QDQ = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def slower_cause(target: str, precision: str, details: Mapping[str, Any] | None = None,
                 delegation: Any = None) -> str:
    """A one-line cause for an optimized artifact that runs slower than fp32, from the converter's
    details (ONNX op counts) or delegation report (TFLite, ExecuTorch) and the host's CPU."""
    details = details or {}
    cpu = host_cpu()
    if delegation is not None and getattr(delegation, "share", 1.0) < 1.0:
        outside = ", ".join(f"{op} x{n}" for op, n in list(delegation.outside_ops.items())[:4])
        return (f"{1 - delegation.share:.1%} of the {precision} graph runs outside {delegation.delegate} on slower "
                f"reference kernels ({outside})")
    if target == "onnx":
        ops = dict(details.get("op_types") or {})
        qdq = sum(ops.get(k, 0) for k in _QDQ)
        int8 = {k: v for k, v in ops.items() if k.startswith(("QLinear", "com.microsoft.QLinear", "com.microsoft.QGemm"))
                or k in ("MatMulInteger", "ConvInteger", "com.microsoft.MatMulIntegerToFloat")}
        if precision == "fp16":
            return (f"ONNX Runtime's CPU provider has few fp16 kernels on this CPU ({cpu}): the fp16 graph runs "
                    f"{ops.get('Cast', 0)} Cast nodes and fp32 kernels behind them")
        if qdq:
            return (f"ONNX Runtime re-quantizes activations around the int8 kernels: {qdq} quantize/dequantize nodes "
                    f"for {sum(int8.values()) or ops.get('MatMul', 0) + ops.get('Gemm', 0) + ops.get('Conv', 0)} "
                    f"quantized ops, and their cost exceeds the int8 matmul gain on this CPU ({cpu})")
        return f"ONNX Runtime's {precision} kernels are slower than its fp32 kernels for this graph on this CPU ({cpu})"
    if precision == "fp16":
        return (f"this CPU ({cpu}) computes the fp16 artifact in fp32 (fp16 weights are widened at load), "
                "so fp16 saves size, not time")
    runtime = {"tflite": "XNNPACK (TFLite)", "executorch": "XNNPACK (ExecuTorch)"}.get(target, target)
    return (f"{runtime}'s {precision} kernels for this graph are slower than its fp32 kernels on this CPU ({cpu}); "
            "the ops kept float between int8 ones add quantize/dequantize steps")
