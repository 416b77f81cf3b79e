"""Fused (edge-rewritten) vs plain conversions, side by side: latency and delegation per runtime.

For every model and runtime, the same model is exported twice through ``edgevit.converters.export``
(verified against the float model on real photos): once with the target's edge rewrites off
(``options={"rewrite": False}``: the plain conversion) and once with them on (the default). Both
artifacts are then loaded in this one process and timed *interleaved* (plain, fused, fused, plain,
...) on the same input, so machine load hits both alike. Reported: median and p10 latency, the
ratio of medians and the median of the per-round ratios (more robust on a shared machine), and
the share of the graph inside the XNNPACK delegate (ExecuTorch and TFLite) before and after.
Unless ``--no-cpu-time``, each pair is also timed at one thread by the process's CPU time per run:
on a shared machine wall time mostly measures the scheduler, CPU time the work each artifact does.

    python benchmarks/fused.py                                   # the issue's table (~1 h on 2 busy cores)
    python benchmarks/fused.py --models mobilevit_xxs --runtimes executorch --runs 30
    python benchmarks/fused.py --out /tmp/fused --reuse          # keep artifacts (and a .json of what
                                                                 # their export reported), reuse them
    python benchmarks/fused.py --json results.json               # also write the raw numbers

``--ort-fusion`` (ONNX only) compares three artifacts of each ViT: plain (``rewrite`` off), the
default (``rewrite`` on) and ONNX Runtime's own transformer fusions
(:mod:`edgevit.converters.onnx_fusion`: attention exported in the form ONNX Runtime recognises,
then ``optimize_model(model_type="vit")`` into com.microsoft contrib ops), all three from one
weights file with non-zero biases (random init has all-zero biases, which the exporter merges
into shared initializers), and verifies the fused one against the float model on real photos:

    python benchmarks/fused.py --ort-fusion --models deit_tiny_patch16_224 vit_tiny_full --runs 20

``--fused-input`` adds the fused input stage: camera-frame (decoded RGB, uint8) to logits, with the
artifact's own preprocessing (resize, normalise, NCHW) vs a fused-input artifact fed the resized
uint8 frame directly. Prints Markdown.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no spinning OpenMP threads
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_MODELS = ("deit_tiny_patch16_224", "mobilevit_xxs", "efficientvit_b0", "swin_tiny_patch4_window7_224")
DEFAULT_RUNTIMES = ("executorch", "tflite", "onnx")


def _load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
        return f"{one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} CPUs"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send file descriptor 1 (Python prints and native writes alike) to stderr for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _export(model: str, target: str, rewrite: bool, out: Path, reuse: bool, fused_input: bool = False,
            bench_weights: bool = False) -> dict[str, Any]:
    from edgevit.converters import export, get_converter

    converter = get_converter(target)
    tag = ("fused" if rewrite else "plain") + ("-frames" if fused_input else "") + ("-w" if bench_weights else "")
    path = out / f"{model}_{target}_{tag}{converter.suffix}"
    record: dict[str, Any] = {"path": str(path), "rewrite": rewrite}
    sidecar = path.with_name(path.name + ".json")  # what only the export knew (delegation, parity)
    if reuse and path.exists():
        if sidecar.exists():
            record.update(json.loads(sidecar.read_text()))
    else:
        options = {"rewrite": rewrite} if "rewrite" in converter.options else {}
        if rewrite and not options:
            raise SystemExit(f"target {target} has no rewrite option")
        import torch

        torch.manual_seed(0)  # plain and fused artifacts of a model carry the same random weights
        with _stdout_to_stderr():  # converters print progress; stdout carries the table only
            result = export(model, target, out=path, force=True, options=options, fused_input=fused_input,
                            weights=_bench_weights(model, out) if bench_weights else None)
        record["export_s"] = round(result.seconds, 1)
        if result.verification is not None and result.verification.ran:
            record["max_abs_diff"] = result.verification.to_dict().get("max_abs_diff")
        if result.delegation is not None:
            record["delegation"] = result.delegation.to_dict()
        sidecar.write_text(json.dumps({k: v for k, v in record.items() if k != "path"}) + "\n")
    if target == "tflite" and "delegation" not in record:
        from edgevit.converters.tflite_delegation import tflite_delegation_report

        record["delegation"] = tflite_delegation_report(path).to_dict()
    record["bytes"] = path.stat().st_size
    return record


def _interleaved(fns: list, warmup: int, runs: int, clock=time.perf_counter) -> list[list[float]]:
    """Per function, ``runs`` timings (seconds, by ``clock``), alternating the order every round."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(runs):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t = clock()
            fns[i]()
            times[i].append(clock() - t)
    return times


def _stats(t: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * float(np.percentile(t, 50)), "p10_ms": 1e3 * float(np.percentile(t, 10))}


def _time_pair(plain: str, fused: str, threads: int, warmup: int, runs: int, cpu_time: bool) -> dict[str, Any]:
    import gc

    from edgevit.runtimes import load

    rt_plain, rt_fused = load(plain, threads=threads), load(fused, threads=threads)
    shape = rt_plain.metadata.input_shape(1)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    diff = float(np.abs(rt_plain.run(x) - rt_fused.run(x)).max())
    t_plain, t_fused = _interleaved([lambda: rt_plain.run(x), lambda: rt_fused.run(x)], warmup, runs)
    paired = statistics.median(a / b for a, b in zip(t_plain, t_fused))
    result: dict[str, Any] = {
        "plain": _stats(t_plain),
        "fused": _stats(t_fused),
        "speedup": statistics.median(t_plain) / statistics.median(t_fused),
        "paired_speedup": paired,
        "plain_vs_fused_max_abs_diff": diff,  # meaningful for artifacts of one run (same seed)
        "runs": runs,
    }
    if cpu_time:
        # One thread, CPU time of the process per run: the work each artifact does, barely
        # touched by other processes competing for the cores (wall time is, heavily).
        del rt_plain, rt_fused
        gc.collect()
        rt_plain, rt_fused = load(plain, threads=1), load(fused, threads=1)
        c_plain, c_fused = _interleaved([lambda: rt_plain.run(x), lambda: rt_fused.run(x)], 2, max(20, runs // 2),
                                        clock=time.process_time)
        result["cpu_1thread"] = {"plain": _stats(c_plain), "fused": _stats(c_fused),
                                 "speedup": statistics.median(c_plain) / statistics.median(c_fused)}
        del rt_plain, rt_fused
        gc.collect()
    return result


def _time_frames(plain: str, fused: str, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Frame (decoded uint8 RGB) to logits: preprocessing + float artifact vs fused-input artifact."""
    from edgevit.preprocess import preprocess
    from edgevit.runtimes import load
    from edgevit.data.samples import natural_photos

    rt_plain, rt_fused = load(plain, threads=threads), load(fused, threads=threads)
    image = natural_photos()[0][1]
    h, w = rt_fused.metadata.input_size
    frame = image.convert("RGB").resize((w, h))  # the camera's frame, already at the model's size

    def run_plain():
        return rt_plain.run(preprocess(frame, rt_plain.metadata))

    def run_fused():
        return rt_fused.run(preprocess(frame, rt_fused.metadata))

    t_plain, t_fused = _interleaved([run_plain, run_fused], warmup, runs)
    return {
        "plain": _stats(t_plain),
        "fused": _stats(t_fused),
        "speedup": statistics.median(t_plain) / statistics.median(t_fused),
        "paired_speedup": statistics.median(a / b for a, b in zip(t_plain, t_fused)),
        "runs": runs,
    }


def _bench_weights(model: str, out: Path) -> Path:
    from _weights import bench_weights  # benchmarks/_weights.py (this script's folder is on sys.path)

    return bench_weights(model, out)


def _ort_fusion_row(model: str, out: Path, reuse: bool, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Plain vs default (rewrite) vs ONNX Runtime-fused ONNX artifacts of one model."""
    from unittest import mock

    import torch

    from edgevit.converters import export
    from edgevit.converters.onnx import ONNXConverter, _warm_attention_bias_caches
    from edgevit.converters.onnx_fusion import fuse_for_onnxruntime, prepare_for_ort_fusion, write_onnx
    from edgevit.converters.rewrites import EdgeRewriteConfig, rewrite_for_target
    from edgevit.converters.verify import verify_runtime
    from edgevit.models import create_model, get_spec
    from edgevit.runtimes import load
    from edgevit.data.samples import sample_images

    weights = _bench_weights(model, out)
    row: dict[str, Any] = {"model": model, "runtime": "onnx", "weights": weights.name}
    paths = {k: out / f"{model}_onnx_{k}.onnx" for k in ("plain", "default", "ortform", "ort")}

    def ort_prepare(self, net, config):  # what --option ort_fusion=true does in the ONNX converter
        row["prepare"] = prepare_for_ort_fusion(net)
        _warm_attention_bias_caches(net)
        return rewrite_for_target(net, config, EdgeRewriteConfig(attention="keep", layer_norm="keep", linear_2d=False))

    for key, rewrite in (("plain", False), ("default", True), ("ortform", True)):
        if reuse and paths[key].exists():
            continue
        with _stdout_to_stderr(), contextlib.ExitStack() as stack:
            if key == "ortform":
                stack.enter_context(mock.patch.object(ONNXConverter, "prepare", ort_prepare))
            result = export(model, "onnx", out=paths[key], force=True, weights=weights, options={"rewrite": rewrite})
        row[f"{key}_export"] = {"seconds": round(result.seconds, 1), "verification": result.verification.summary()}
    fused, report = fuse_for_onnxruntime(paths["ortform"], create_model(model, weights=weights), get_spec(model))
    write_onnx(fused, paths["ort"])
    row["fusion"] = report.to_dict()
    rt = load(paths["ort"])
    row["metadata_kept"] = rt.metadata.model == model and "onnxruntime_fusion" in rt.metadata.extra
    reference = create_model(model, weights=weights).eval()
    row["verification"] = verify_runtime(rt, reference, sample_images(get_spec(model).labels), "fp32").to_dict()
    del rt
    row["bytes"] = {k: p.stat().st_size for k, p in paths.items() if k != "ortform"}
    order = ("plain", "default", "ort")
    sessions = [load(paths[k], threads=threads) for k in order]
    x = np.random.default_rng(0).standard_normal(sessions[0].metadata.input_shape(1)).astype(np.float32)
    row["max_abs_diff_vs_plain"] = {k: float(np.abs(s.run(x) - sessions[0].run(x)).max()) for k, s in zip(order, sessions)}
    wall = _interleaved([lambda s=s: s.run(x) for s in sessions], warmup, runs)
    del sessions
    sessions = [load(paths[k], threads=1) for k in order]
    cpu = _interleaved([lambda s=s: s.run(x) for s in sessions], 2, max(20, runs // 2), clock=time.process_time)
    del sessions
    row["timing"] = {
        "runs": runs,
        "wall": {k: _stats(t) for k, t in zip(order, wall)},
        "cpu_1thread": {k: _stats(t) for k, t in zip(order, cpu)},
        "ort_vs_plain_paired": statistics.median(a / b for a, b in zip(wall[0], wall[2])),
        "ort_vs_default_paired": statistics.median(a / b for a, b in zip(wall[1], wall[2])),
        "default_vs_plain_paired": statistics.median(a / b for a, b in zip(wall[0], wall[1])),
        "cpu_ort_vs_plain": statistics.median(cpu[0]) / statistics.median(cpu[2]),
        "cpu_ort_vs_default": statistics.median(cpu[1]) / statistics.median(cpu[2]),
        "cpu_default_vs_plain": statistics.median(cpu[0]) / statistics.median(cpu[1]),
    }
    return row


def markdown_ort(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"ONNX Runtime fusion (com.microsoft contrib ops) vs default (rewrite on) vs plain (rewrite off), onnxruntime "
        f"CPU, {header['threads']} threads, batch 1, fp32, median of {header['runs']} interleaved runs after "
        f"{header['warmup']} warm-up; load average at start {header['load_start']}, at end {header['load_end']}.",
        "",
        "| model | plain ms | default ms | ORT-fused ms | ORT-fused vs plain (paired) | vs default (paired) | "
        "1-thread CPU ms plain / default / ORT-fused | fused ops | parity on real photos (fp32 tolerance) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | - | - | - | - | - | - | - | error: {r['error'][:160]} |")
            continue
        t, w, c = r["timing"], r["timing"]["wall"], r["timing"]["cpu_1thread"]
        f = r["fusion"]
        ops = ", ".join(f"{k} {v}" for k, v in f["fused_ops"].items()) if f["applied"] else f"not applied: {f['reason']}"
        v = r["verification"]
        parity = (f"{'PASS' if v['passed'] else 'FAIL'}: {v['n_images']} photos, top-1 {v['top1_agreement']:.0%}, "
                  f"cos min {v['cosine_min']:.6f}, max abs {v['max_abs_diff']:.2g} (max logit {v['max_abs_logit']:.3g})")
        lines.append(
            f"| {r['model']} | {w['plain']['median_ms']:.1f} | {w['default']['median_ms']:.1f} | {w['ort']['median_ms']:.1f} | "
            f"{w['plain']['median_ms'] / w['ort']['median_ms']:.2f}x ({t['ort_vs_plain_paired']:.2f}x) | "
            f"{w['default']['median_ms'] / w['ort']['median_ms']:.2f}x ({t['ort_vs_default_paired']:.2f}x) | "
            f"{c['plain']['median_ms']:.1f} / {c['default']['median_ms']:.1f} / {c['ort']['median_ms']:.1f} "
            f"({t['cpu_ort_vs_plain']:.2f}x, {t['cpu_ort_vs_default']:.2f}x) | {ops} | {parity} |"
        )
    return "\n".join(lines)


def _share(record: dict[str, Any]) -> str:
    d = record.get("delegation")
    if not d:
        return "-"
    return f"{100 * d['share']:.1f}% / {d['partitions']}"


def _outside(record: dict[str, Any], limit: int = 3) -> str:
    d = record.get("delegation")
    if not d or not d["outside_ops"]:
        return ""
    return ", ".join(f"{op.replace('aten.', '')} x{n}" for op, n in list(d["outside_ops"].items())[:limit])


def markdown(rows: list[dict[str, Any]], frames: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        f"Fused vs plain, {header['threads']} threads, batch 1, fp32, median of {header['runs']} interleaved runs "
        f"after {header['warmup']} warm-up; load average at start {header['load_start']}, at end {header['load_end']}.",
        "",
        "| model | runtime | plain ms (p10) | fused ms (p10) | speed-up (paired) | 1-thread CPU ms plain -> fused (speed-up) | delegated plain -> fused (share / partitions) | left outside after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['runtime']} | - | - | - | - | - | error: {r['error'][:120]} |")
            continue
        t = r["timing"]
        c = t.get("cpu_1thread")
        cpu = f"{c['plain']['median_ms']:.1f} -> {c['fused']['median_ms']:.1f} ({c['speedup']:.2f}x)" if c else "-"
        lines.append(
            f"| {r['model']} | {r['runtime']} | {t['plain']['median_ms']:.1f} ({t['plain']['p10_ms']:.1f}) | "
            f"{t['fused']['median_ms']:.1f} ({t['fused']['p10_ms']:.1f}) | {t['speedup']:.2f}x ({t['paired_speedup']:.2f}x) | "
            f"{cpu} | {_share(r['plain'])} -> {_share(r['fused'])} | {_outside(r['fused'])} |"
        )
    if frames:
        lines += [
            "",
            "Camera frame to logits (decode excluded): artifact preprocessing + float input vs fused input stage.",
            "",
            "| model | runtime | preprocess + plain ms (p10) | fused input ms (p10) | speed-up (paired) |",
            "|---|---|---|---|---|",
        ]
        for r in frames:
            if "error" in r:
                lines.append(f"| {r['model']} | {r['runtime']} | - | - | error: {r['error'][:120]} |")
                continue
            t = r["timing"]
            lines.append(
                f"| {r['model']} | {r['runtime']} | {t['plain']['median_ms']:.2f} ({t['plain']['p10_ms']:.2f}) | "
                f"{t['fused']['median_ms']:.2f} ({t['fused']['p10_ms']:.2f}) | {t['speedup']:.2f}x ({t['paired_speedup']:.2f}x) |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    ap.add_argument("--runtimes", nargs="*", default=list(DEFAULT_RUNTIMES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per artifact (>= 20)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="artifact folder (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true", help="reuse artifacts already in --out")
    ap.add_argument("--fused-input", action="store_true", help="also time the fused input stage")
    ap.add_argument("--no-cpu-time", action="store_true", help="skip the 1-thread CPU-time comparison")
    ap.add_argument("--json", type=Path, default=None, help="write the raw results here")
    ap.add_argument("--bench-weights", action="store_true",
                    help="export from a seeded weights file with no zero biases/scales (see _bench_weights) "
                         "instead of random init, whose zero-initialised residual branches a converter may drop")
    ap.add_argument("--ort-fusion", action="store_true",
                    help="ONNX only: plain vs default vs ONNX Runtime-fused (contrib ops) artifacts of ViT models")
    args = ap.parse_args(argv)
    if args.runs < 20:
        ap.error("--runs must be at least 20")

    from edgevit.converters import get_converter

    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgevit-fused-")
        args.out = Path(tmp.name)
    args.out.mkdir(parents=True, exist_ok=True)
    header = {"threads": args.threads, "runs": args.runs, "warmup": args.warmup, "load_start": _load_average(),
              "weights": "bench (no zero biases/scales)" if args.bench_weights else "random init (seed 0)"}
    rows: list[dict[str, Any]] = []
    frames: list[dict[str, Any]] = []
    if args.ort_fusion:
        for model in args.models:
            try:
                row = _ort_fusion_row(model, args.out, args.reuse, args.threads, args.warmup, args.runs)
            except Exception as exc:  # one failure must not stop the table; it is printed in it
                row = {"model": model, "runtime": "onnx",
                       "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            rows.append(row)
            print(f"# {model}: " + (f"{row['timing']['ort_vs_plain_paired']:.2f}x vs plain, "
                  f"{row['timing']['ort_vs_default_paired']:.2f}x vs default" if "timing" in row else row["error"]),
                  file=sys.stderr, flush=True)
        header["load_end"] = _load_average()
        print(markdown_ort(rows, header))
        if args.json:
            args.json.write_text(json.dumps({"header": header, "ort_fusion": rows}, indent=1, default=str) + "\n")
        if tmp is not None:
            tmp.cleanup()
        return 0
    for model in args.models:
        for runtime in args.runtimes:
            row: dict[str, Any] = {"model": model, "runtime": runtime}
            try:
                if "rewrite" not in get_converter(runtime).options:
                    raise RuntimeError(f"target {runtime} has no rewrite option yet")
                row["plain"] = _export(model, runtime, False, args.out, args.reuse, bench_weights=args.bench_weights)
                row["fused"] = _export(model, runtime, True, args.out, args.reuse, bench_weights=args.bench_weights)
                row["timing"] = _time_pair(row["plain"]["path"], row["fused"]["path"], args.threads, args.warmup, args.runs,
                                           not args.no_cpu_time)
            except Exception as exc:  # one failure must not stop the table; it is printed in it
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            rows.append(row)
            t = row.get("timing")
            print(f"# {model} {runtime}: " + (f"{t['plain']['median_ms']:.1f} -> {t['fused']['median_ms']:.1f} ms "
                  f"({t['speedup']:.2f}x, paired {t['paired_speedup']:.2f}x)" if t else row.get("error", "")),
                  file=sys.stderr, flush=True)
            if args.fused_input and "error" not in row:
                frow: dict[str, Any] = {"model": model, "runtime": runtime}
                try:
                    framed = _export(model, runtime, True, args.out, args.reuse, fused_input=True)
                    frow["timing"] = _time_frames(row["fused"]["path"], framed["path"], args.threads, args.warmup, args.runs)
                except Exception as exc:
                    frow["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                frames.append(frow)
    header["load_end"] = _load_average()
    print(markdown(rows, frames, header))
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows, "frames": frames}, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
