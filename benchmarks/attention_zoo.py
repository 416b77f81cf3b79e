#!/usr/bin/env python
"""The efficient-attention zoo, measured: one command -> one JSON, one markdown table, one plot.

    python benchmarks/attention_zoo.py                 # the full run (hours on 2 cores: run it on a quiet machine)
    python benchmarks/attention_zoo.py --quick         # a small proof run (minutes)
    python benchmarks/attention_zoo.py --mechanisms full,bigbird,linear --skip train

For every attention mechanism of :mod:`edgevit.models.attention` (``describe_mechanisms()``):

* **cost** (``costs``): DeiT-Tiny geometry (patch 16, width 192, 3 heads, class token) at each
  ``--resolutions`` (224 px = 197 tokens ... 1024 px = 4097 tokens). MACs of the 12-block model
  and peak activation memory come from :mod:`edgevit.measure.profile` (eager CPU forward; MACs of 12
  blocks = 1-block + 11 x (2-block - 1-block), exact since blocks are identical; the activation
  peak of one block, which is the model's: blocks run one after the other).
* **attention MACs** (``core``): one attention layer without its QKV/output projections, counted
  with ``FlopCounterMode`` on the meta device at ``--resolutions`` and ``--core-resolutions``
  (cheap at any size); their log-log slope between the two largest sizes is the **measured
  exponent**, set beside the exponent the paper's complexity claims.
* **latency** (``latency``): a depth-reduced model (``--depth`` blocks, stated in the table) per
  mechanism and ``--latency-resolutions``, in torch eager and through ``edgevit.converters.export``
  to each ``--runtimes`` target (verified on real photos), timed through ``edgevit.runtimes``
  (median of ``--runs`` after ``--warmup``, ``--threads`` threads, batch 1).
* **export** (``export``): each mechanism's catalog entry (``vit_fmnist_<m>`` by default, fast;
  ``--status-scale tiny`` for the 224 px ``vit_tiny_<m>``) exported to each ``--targets`` target
  with ``edgevit.converters.export``: verified, or the blocking op.
* **accuracy** (``train``): ``vit_fmnist_<m>`` (32 px Fashion-MNIST, patch 4, 4 blocks) trained with
  ``edgevit.compress.training.train`` for the same budget (``--epochs``, ``--train-limit``), top-1 on the
  real test split.
* **size options** (``size``, stored under the JSON key ``size_options``): ALBERT's cross-layer
  sharing and factorized patch embedding beside the full-attention model: ``vit_fmnist_full`` vs
  ``vit_fmnist_full_shared`` vs ``vit_fmnist_full_factorized`` (parameters, MACs, artifact size per
  ``--size-targets``, top-1 after the ``train`` section's budget) and the ``vit_tiny_full*`` geometry
  (parameters, MACs). Measure it alone, keeping every other section's results::

      python benchmarks/attention_zoo.py --sections size --merge

Results are written after each section (``--out``/attention_zoo.json), so a stopped run keeps
what it measured; the table (attention_zoo.md) and the plot (attention_zoo.png) are rebuilt
from the JSON at the end (``--report-only`` rebuilds them without measuring).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SECTIONS = ("core", "costs", "latency", "export", "train", "size")
SIZE_FMNIST = ("vit_fmnist_full", "vit_fmnist_full_shared", "vit_fmnist_full_factorized")
SIZE_TINY = ("vit_tiny_full", "vit_tiny_full_shared", "vit_tiny_full_factorized")
PATCH = 16


# ------------------------------------------------------------------------------------------
# Models


def _mechanism_kwargs(mech: str) -> dict[str, Any]:
    """The catalog's options for ``mech`` at 224 px (vit_tiny_<mech>)."""
    from edgevit.models.catalog_zoo import TINY_ZOO_KWARGS

    extra = {"window": {"window": 7}, "linformer": {"k": 64}, "performer": {"features": 64}}
    return dict(TINY_ZOO_KWARGS.get(mech, extra.get(mech, {})))


def _closest_divisor(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


def build_vit(mech: str, resolution: int, depth: int = 12, num_classes: int = 1000):
    """The zoo ViT for ``mech`` at ``resolution`` with ``depth`` blocks (options fixed as in the
    catalog; a window that does not divide the grid becomes the closest divisor)."""
    from edgevit.models.catalog_zoo import zoo_vit

    kw = _mechanism_kwargs(mech)
    grid = resolution // PATCH
    if mech == "window":
        kw["window"] = _closest_divisor(grid, kw["window"])
    return zoo_vit(mech, kw, img_size=resolution, depth=depth, num_classes=num_classes,
                   global_pool="avg" if mech == "window" else "token").eval()


def _claimed_exponent(complexity: str) -> float:
    if "N^2" in complexity:
        return 2.0
    if "sqrt(N)" in complexity or "(H + W)" in complexity:
        return 1.5
    return 1.0


PROJECTIONS = (".qkv", ".qkv2", ".proj")


def core_attention_macs(mech: str, resolution: int) -> int:
    """MACs of one attention layer without its QKV and output projections (what the mechanism
    itself adds: scores, values, gathers' matmuls, landmarks, random features, compression convs,
    sorting networks...), counted with ``FlopCounterMode`` on the meta device (shapes only, so
    any size is cheap)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgevit.models.attention import get_attention

    grid = resolution // PATCH
    kw = _mechanism_kwargs(mech)
    if mech == "window":
        kw["window"] = _closest_divisor(grid, kw["window"])
    prefix = 0 if mech == "window" else 1
    with torch.device("meta"):
        m = get_attention(mech)(192, 3, (grid, grid), prefix, **kw).eval()
        x = torch.zeros(1, m.num_tokens, 192)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    projections = sum(v for name, v in counts.items() if name.endswith(PROJECTIONS))
    return (counts["Global"] - projections) // 2


def measure_costs(mech: str, resolution: int) -> dict[str, Any]:
    import torch

    from edgevit.measure.profile import profile_model

    torch.manual_seed(0)
    results = []
    for depth in (1, 2):
        model = build_vit(mech, resolution, depth)
        results.append(profile_model(model, resolution, device="cpu"))
        del model
        gc.collect()
    one, two = results
    per_block = {c: two.components[c].macs - one.components[c].macs for c in one.components}
    block_macs = two.macs - one.macs
    attention_block = block_macs - per_block.get("mlp", 0) - per_block.get("norm", 0)
    params_block = two.params - one.params
    return {
        "tokens": (resolution // PATCH) ** 2 + (0 if mech == "window" else 1),
        "gmacs_12": (one.macs + 11 * block_macs) / 1e9,
        "params_m_12": (one.params + 11 * params_block) / 1e6,
        "attention_block_gmacs": attention_block / 1e9,
        "peak_activation_mb": one.peak_activation_mb,
        "attn_max_tensor_mb": max(one.components[c].max_tensor_bytes for c in ("attn_score", "attn_value", "proj"))
        / 2**20,
    }


# ------------------------------------------------------------------------------------------
# Latency


_TEMP_SPECS: dict[tuple[str, int, int], str] = {}


def _temporary_spec(mech: str, resolution: int, depth: int) -> str:
    """A catalog entry (this process only) for the depth-reduced model, so the export goes
    through ``edgevit.converters.export`` with its verification on real photos."""
    key = (mech, resolution, depth)
    if key in _TEMP_SPECS:
        return _TEMP_SPECS[key]
    from edgevit.models import ModelSpec, register_model
    from edgevit.models.catalog_zoo import ZOO_KIND

    name = f"zoo_bench_{mech}_{resolution}_d{depth}"
    register_model(ModelSpec(
        name=name, family="edgevit-vit", attention=ZOO_KIND[mech],
        builder=lambda num_classes=None, pretrained=False: build_vit(mech, resolution, depth, num_classes or 1000),
        input_size=(resolution, resolution), source="edgevit benchmark", license="apache-2.0",
        description=f"{mech}, {depth} blocks, {resolution} px (benchmark only)",
    ))
    _TEMP_SPECS[key] = name
    return name


def _time(fn, warmup: int, runs: int) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
            "min_ms": min(times)}


def _blocking_op(exc: BaseException) -> str:
    import re

    op = getattr(exc, "op", None)
    if op:
        return op
    text = "".join(traceback.format_exception_only(type(exc), exc))
    m = re.search(r"(aten[.:]{1,2}[a-z_0-9]+|tfl\.[a-z_0-9]+|stablehlo\.[a-z_0-9]+|onnx::[A-Za-z]+)", text)
    return m.group(1) if m else f"{type(exc).__name__}: {text.strip().splitlines()[-1][:160]}"


def measure_latency(mech: str, resolution: int, depth: int, runtimes: list[str], threads: int,
                    warmup: int, runs: int, workdir: Path) -> dict[str, Any]:
    import numpy as np
    import torch

    from edgevit.converters import export
    from edgevit.runtimes import load

    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, resolution, resolution)).astype(np.float32)
    for rt in runtimes:
        try:
            if rt == "torch":
                torch.set_num_threads(threads)
                model = build_vit(mech, resolution, depth)
                xt = torch.from_numpy(x)
                with torch.inference_mode():
                    out[rt] = _time(lambda: model(xt), warmup, runs)
                del model
            else:
                name = _temporary_spec(mech, resolution, depth)
                result = export(name, rt, out=workdir / rt, force=True)
                runtime = load(result.path, threads=threads)
                batch = x.astype(runtime.metadata.input_dtype)
                timing = _time(lambda: runtime.run(batch), warmup, runs)
                timing["export_s"] = round(result.seconds, 1)
                timing["verified"] = result.verification.summary() if result.verification else None
                out[rt] = timing
                del runtime
                result.path.unlink(missing_ok=True)
        except Exception as exc:  # a mechanism a runtime cannot run is a result, not a crash
            out[rt] = {"error": _blocking_op(exc)}
        gc.collect()
    return out


# ------------------------------------------------------------------------------------------
# Export status and accuracy


def export_status(name: str, target: str, workdir: Path) -> dict[str, Any]:
    from edgevit.converters import export

    start = time.perf_counter()
    try:
        r = export(name, target, out=workdir / target, force=True)
        status = {"status": "verified" if r.verification is not None and r.verification.ran else "structural",
                  "seconds": round(r.seconds, 1), "bytes": r.bytes,
                  "verification": r.verification.summary() if r.verification else None}
        if r.delegation is not None:
            status["delegated_share"] = round(r.delegation.share, 4)
            status["partitions"] = r.delegation.partitions
            status["outside_ops"] = dict(r.delegation.outside_ops)
        r.path.unlink(missing_ok=True) if r.path.is_file() else None
        return status
    except Exception as exc:
        return {"status": "fails", "op": _blocking_op(exc), "seconds": round(time.perf_counter() - start, 1),
                "message": str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}


def train_top1(mech: str, epochs: int, train_limit: int | None, test_limit: int | None, batch_size: int,
               threads: int, workdir: Path) -> dict[str, Any]:
    from edgevit.compress.training import train

    r = train(f"vit_fmnist_{mech}", "fashion-mnist", epochs=epochs, train_limit=train_limit, test_limit=test_limit,
              batch_size=batch_size, threads=threads, out=workdir / f"train_{mech}", force=True, progress=False)
    return {"top1": r.test_top1, "seconds": round(r.seconds, 1), "epochs": epochs, "train_limit": train_limit,
            "test_limit": test_limit, "batch_size": batch_size}


def size_options(settings: dict[str, Any], targets: list[str], threads: int, workdir: Path,
                 note=lambda msg: None, save=lambda part: None) -> dict[str, Any]:
    """The size-options section: parameters and MACs (``edgevit.measure.profile``, meta device) of
    :data:`SIZE_FMNIST` and :data:`SIZE_TINY`; for the Fashion-MNIST models also the verified
    artifact of each target and top-1 after the ``train`` section's budget (``settings``'
    epochs / train_limit / test_limit / batch_size). ``save`` gets the partial result after each
    model, so a stopped run keeps what it measured."""
    from edgevit.models import create_model, get_spec
    from edgevit.measure.profile import profile_model

    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()]},
        "settings": {k: settings.get(k) for k in ("epochs", "train_limit", "test_limit", "batch_size")}
        | {"threads": threads, "targets": targets},
        "models": {},
    }
    for name in SIZE_TINY + SIZE_FMNIST:
        spec = get_spec(name)
        model = create_model(name)
        r = profile_model(name)
        row: dict[str, Any] = {
            "params": r.params, "gmacs": r.gmacs,
            "share_layers": getattr(model, "share_layers", None), "embed_rank": getattr(model, "embed_rank", None),
            "depth": getattr(model, "depth", len(model.blocks)), "distinct_blocks": len(model.blocks),
            "input_size": list(spec.input_size),
        }
        del model
        out["models"][name] = row
        if name in SIZE_FMNIST:
            for t in targets:
                note(f"size: export {name} -> {t}")
                row.setdefault("export", {})[t] = export_status(name, t, workdir)
            if settings.get("epochs"):
                note(f"size: train {name} ({settings.get('epochs')} epoch(s), {settings.get('train_limit')} images)")
                try:
                    row["train"] = train_top1(name.removeprefix("vit_fmnist_"), settings["epochs"],
                                              settings.get("train_limit"), settings.get("test_limit"),
                                              settings.get("batch_size", 128), threads, workdir)
                except Exception as exc:
                    row["train"] = {"error": _blocking_op(exc)}
        gc.collect()
        save(out)
    out["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    return out


def build_size_report(size: dict[str, Any], zoo_train: dict[str, Any] | None = None) -> list[str]:
    """Markdown lines of the size-options section."""
    st = size.get("settings", {})
    models = size.get("models", {})
    targets = st.get("targets", [])
    lines = ["## Size options: cross-layer sharing and factorized patch embedding (ALBERT)", "",
             "Lan et al. 2020 (ALBERT) cut parameters with (a) cross-layer parameter sharing (one block's weights "
             "applied at every depth: `share_layers=1`) and (b) a factorized embedding (here the patch embedding: "
             "p x p x C patch pixels -> rank r -> width D, `embed_rank=r`), both on the full-attention zoo ViT "
             "(`EdgeViT(share_layers=..., embed_rank=...)`, catalog entries `vit_*_full_shared`, "
             "`vit_*_full_factorized`). Parameters and GMACs: `edgevit.measure.profile` at each entry's input size. "
             f"Artifacts: fp32 through `edgevit.converters.export` ({', '.join(targets) or 'none'}), "
             "bytes of the verified file. Top-1: the `train` section's budget "
             f"({st.get('epochs')} epoch(s) on {st.get('train_limit') or 'all 60000'} Fashion-MNIST training images, "
             f"batch {st.get('batch_size')}, tested on {st.get('test_limit') or 'all 10000'}; "
             f"{st.get('threads')} thread(s)); run {size.get('started')} - {size.get('finished', 'unfinished')}, "
             f"load average at start {size.get('machine', {}).get('load_avg')}.", ""]
    head = ["model", "sharing", "embed rank", "params", "params vs full", "GMACs"]
    head += [f"{t} bytes" for t in targets] + ["top-1"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in models.items():
        base = models.get(name.split("_full")[0] + "_full", row)
        cells = [name,
                 f"{row['distinct_blocks']} block(s) x {row['depth'] // row['distinct_blocks']}"
                 if row.get("share_layers") else f"none ({row.get('depth')} blocks)",
                 str(row.get("embed_rank") or "-"), f"{row['params']:,}",
                 f"{100 * row['params'] / base['params']:.1f}%", f"{row['gmacs']:.4g}"]
        for t in targets:
            e = row.get("export", {}).get(t)
            if e is None:
                cells.append("-")
            elif e["status"] == "fails":
                cells.append(f"fails ({e.get('op')})")
            else:
                cells.append(f"{e['bytes']:,} ({e['status']})")
        acc = row.get("train")
        cells.append("-" if acc is None else f"{100 * acc['top1']:.1f}%" if "top1" in acc else acc.get("error", "-"))
        lines.append("| " + " | ".join(cells) + " |")
    if zoo_train and "top1" in zoo_train:
        lines += ["", f"(The zoo table's `full` row, trained in the zoo run with the same budget: "
                  f"{100 * zoo_train['top1']:.1f}%.)"]
    lines += ["", "Sharing keeps the MACs (the block still runs at every depth) and cuts the stored weights; "
              "the factorized embedding cuts the patch-embedding weights and MACs (r (p^2 C + D) instead of "
              "p^2 C D per patch), a real saving only where p^2 C is large (768 values per patch at patch 16, "
              "RGB; 16 for the 1-channel patch-4 Fashion-MNIST model).", ""]
    return lines


# ------------------------------------------------------------------------------------------
# Report


def _fmt(v: Any, spec: str = "{:.3g}") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return spec.format(v)
    return str(v)


def _tokens(mech: str, resolution: int) -> int:
    return (resolution // PATCH) ** 2 + (0 if mech == "window" else 1)


def _core_points(mech: str, row: dict[str, Any]) -> list[tuple[int, float]]:
    return sorted((_tokens(mech, int(r)), g) for r, g in row.get("core", {}).items() if isinstance(g, float))


def _exponent(mech: str, row: dict[str, Any]) -> tuple[float, int, int] | None:
    pts = _core_points(mech, row)
    if len(pts) < 2:
        return None
    (n0, m0), (n1, m1) = pts[-2], pts[-1]
    return math.log(m1 / m0) / math.log(n1 / n0), n0, n1


def build_report(data: dict[str, Any]) -> str:
    settings = data.get("settings", {})
    rows = data.get("mechanisms", {})
    measured = {sec for row in rows.values() for sec in SECTIONS if sec != "size" and row.get(sec)}
    res = [int(r) for r in settings.get("resolutions", [])] if "costs" in measured else []
    lat_res = [int(r) for r in settings.get("latency_resolutions", [])] if "latency" in measured else []
    lo, hi = (res[0], res[-1]) if res else (None, None)
    runtimes = settings.get("runtimes", []) if lat_res else []
    targets = settings.get("targets", []) if "export" in measured else []
    machine = data.get("machine", {})
    what = [f"Machine: {machine.get('processor') or machine.get('machine')}, {machine.get('cpus')} CPUs, "
            f"{settings.get('threads')} threads, load average at start {machine.get('load_avg')}; "
            f"run {data.get('started')} - {data.get('finished', 'unfinished')}."]
    if res:
        what.append("Costs (GMACs, parameters, activation peak): 12-block DeiT-Tiny geometry (patch 16, width 192, "
                    "3 heads, class token), batch 1, fp32, eager forward.")
    if lat_res:
        what.append(f"Latency: {settings.get('depth')}-block models of the same geometry, batch 1, median of "
                    f"{settings.get('runs')} runs after {settings.get('warmup')} warm-up, ms.")
    if targets:
        what.append(f"Export status: `vit_{settings.get('status_scale')}_<mechanism>` catalog entries through "
                    "`edgevit.converters.export` (verified = parity on real images; structural = converted, "
                    "cannot run on this OS).")
    if "train" in measured:
        what.append(f"Top-1: `vit_fmnist_<mechanism>` (32 px, patch 4, width 96, 4 blocks) after "
                    f"{settings.get('epochs')} epoch(s) on {settings.get('train_limit') or 'all 60000'} Fashion-MNIST "
                    f"training images (batch {settings.get('batch_size', 128)}, AdamW, edgevit.compress.training defaults), "
                    "tested on "
                    f"{settings.get('test_limit') or 'all 10000'} test images.")
    lines = ["# Efficient-attention zoo: measured", "", " ".join(what), ""]
    head = ["mechanism", "family", "claimed"]
    if res:
        head += ["exponent claimed / measured", f"GMACs @{lo}", f"GMACs @{hi}", f"params M @{hi}",
                 f"act. MB @{lo}", f"act. MB @{hi}"]
    lat_cols = [(rt, r) for rt in runtimes for r in lat_res]
    head += [f"{rt} ms @{r}" for rt, r in lat_cols]
    head += list(targets)
    if "train" in measured:
        head.append("top-1")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    disagreements = []
    for mech, row in rows.items():
        d = row.get("describe", {})
        cells = [mech, d.get("family", ""), d.get("complexity", "")]
        if res:
            costs = row.get("costs", {})
            fit = _exponent(mech, row)
            exp_c = _claimed_exponent(d.get("complexity", ""))
            cells.append(f"{exp_c:g} / {fit[0]:.2f}" if fit is not None else f"{exp_c:g} / -")
            if fit is not None and abs(fit[0] - exp_c) > 0.2:
                disagreements.append(
                    f"- **{mech}**: claimed {d.get('complexity')} (exponent {exp_c:g}); one layer's attention MACs "
                    f"(projections excluded) grow as N^{fit[0]:.2f} from N={fit[1]} to N={fit[2]}. "
                    f"This implementation: {d.get('implementation', '')}.")
            c_lo, c_hi = costs.get(str(lo), {}), costs.get(str(hi), {})
            cells += [_fmt(c_lo.get("gmacs_12")), _fmt(c_hi.get("gmacs_12")), _fmt(c_hi.get("params_m_12"), "{:.2f}"),
                      _fmt(c_lo.get("peak_activation_mb"), "{:.1f}"), _fmt(c_hi.get("peak_activation_mb"), "{:.1f}")]
        lat = row.get("latency", {})
        for rt, r in lat_cols:
            entry = lat.get(str(r), {}).get(rt)
            if entry is None:
                cells.append("-")
            elif "error" in entry:
                cells.append(f"fails ({entry['error']})")
            else:
                cells.append(f"{entry['median_ms']:.1f}")
        for t in targets:
            st = row.get("export", {}).get(t)
            if st is None:
                cells.append("-")
            elif st["status"] == "fails":
                cells.append(f"fails ({st.get('op')})")
            elif "delegated_share" in st:
                cells.append(f"{st['status']} ({100 * st['delegated_share']:.0f}% delegated)")
            else:
                cells.append(st["status"])
        if "train" in measured:
            acc = row.get("train", {})
            cells.append(f"{100 * acc['top1']:.1f}%" if "top1" in acc else acc.get("error", "-"))
        lines.append("| " + " | ".join(cells) + " |")
    if res:
        core_res = sorted({int(r) for row in rows.values() for r in row.get("core", {})})
        lines += ["", "Exponent: log-log slope of one attention layer's MACs without its QKV/output projections "
                  f"(counted on the meta device at {', '.join(map(str, core_res))} px) between the two largest sizes, "
                  "beside the exponent of the claimed complexity (N^2 -> 2, N sqrt N -> 1.5, else 1). GMACs and "
                  "parameters: the whole 12-block model; act. MB: peak activation memory of the eager forward.", ""]
    if disagreements:
        lines += ["## Where measurement and claim disagree", ""] + disagreements + [""]
    lines += ["## Mechanisms", "", "| mechanism | paper | this implementation | static indices | notes |",
              "|---|---|---|---|---|"]
    for mech, row in rows.items():
        d = row.get("describe", {})
        lines.append(f"| {mech} | {d.get('paper', '')} | {d.get('implementation', '')} | "
                     f"{'yes' if d.get('static_indices', True) else 'no (data-dependent)'} | {d.get('notes', '')} |")
    if data.get("size_options"):
        lines += [""] + build_size_report(data["size_options"], rows.get("full", {}).get("train"))
    return "\n".join(lines).rstrip("\n") + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 6))
    runtimes = data.get("settings", {}).get("runtimes", [])
    rt = runtimes[0] if runtimes else None
    colors = plt.get_cmap("tab20").colors
    markers = "osD^v<>ph*"
    for i, (mech, row) in enumerate(data.get("mechanisms", {}).items()):
        family = row.get("describe", {}).get("family")
        style = dict(color=colors[i % len(colors)], marker=markers[i % len(markers)], ms=4, label=mech,
                     linestyle="--" if family in ("reference", "synthesizer", "compressed") else "-")
        pts = _core_points(mech, row)
        if pts:
            axes[0].plot(*zip(*pts), **style)
        lat = sorted((_tokens(mech, int(r)), v[rt]["median_ms"]) for r, v in row.get("latency", {}).items()
                     if rt in v and "median_ms" in v[rt])
        if lat:
            axes[1].plot(*zip(*lat), **style)
    axes[0].set(xscale="log", yscale="log", xlabel="tokens N", ylabel="attention GMACs per layer (no projections)",
                title="attention cost as N grows")
    axes[1].set(xscale="log", yscale="log", xlabel="tokens N",
                ylabel=f"{rt} latency, ms ({data.get('settings', {}).get('depth')} blocks)", title="measured latency")
    axes[0].legend(fontsize=7, ncol=2)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------
# Driver


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mechanisms", help="comma-separated (default: every registered mechanism)")
    p.add_argument("--resolutions", default="224,448,640,1024", help="cost sweep, px (default %(default)s)")
    p.add_argument("--core-resolutions", default="2048",
                   help="extra sizes for the attention-only MAC count (meta device, cheap; default %(default)s)")
    p.add_argument("--latency-resolutions", default="224,1024", help="latency sweep, px (default %(default)s)")
    p.add_argument("--depth", type=int, default=2, help="blocks in the latency models (default %(default)s)")
    p.add_argument("--runtimes", default="torch,onnx,tflite", help="torch and/or export targets (default %(default)s)")
    p.add_argument("--targets", default="tflite,onnx,executorch,coreml",
                   help="export-status targets (default %(default)s)")
    p.add_argument("--status-scale", choices=("fmnist", "tiny"), default="fmnist",
                   help="catalog entries for the export status: vit_fmnist_<m> (fast) or vit_tiny_<m> (224 px)")
    p.add_argument("--epochs", type=int, default=3, help="training budget per mechanism (default %(default)s)")
    p.add_argument("--train-limit", type=int, default=None, help="training images (default: all 60000)")
    p.add_argument("--test-limit", type=int, default=None, help="test images (default: all 10000)")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size (default %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--skip", default="", help=f"sections to skip: {', '.join(SECTIONS)}")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="sections to run (default: all); e.g. `--sections size --merge` adds the size options to "
                        "the existing results without re-measuring the rest")
    p.add_argument("--size-targets", default="tflite",
                   help="export targets whose artifact size the size section records (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="proof-run defaults: resolutions 224,448; latency at 224 and 448 with 1 block on torch,onnx; "
                        "targets tflite,onnx; 1 epoch on 2000 images (1000 test)")
    p.add_argument("--out", default="benchmarks/results", help="folder for attention_zoo.{json,md,png}")
    p.add_argument("--report-only", action="store_true", help="rebuild the table and plot from the JSON")
    p.add_argument("--merge", action="store_true",
                   help="add to the existing JSON in --out (re-measure some mechanisms or sections) instead of replacing it")
    if p.parse_known_args(argv)[0].quick:  # quick changes the defaults; explicit options still win
        p.set_defaults(resolutions="224,448", latency_resolutions="224,448", depth=1, runtimes="torch,onnx",
                       targets="tflite,onnx", runs=5, warmup=1, epochs=1, train_limit=2000, test_limit=1000)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "attention_zoo.json"
    if args.report_only:
        data = json.loads(json_path.read_text())
        (out / "attention_zoo.md").write_text(build_report(data))
        plot(data, out / "attention_zoo.png")
        return 0

    import torch

    from edgevit.models.attention import attention_names, describe_mechanisms

    torch.set_num_threads(args.threads)
    described = {d["name"]: d for d in describe_mechanisms()}
    mechs = args.mechanisms.split(",") if args.mechanisms else [d["name"] for d in describe_mechanisms()]
    unknown = sorted(set(mechs) - set(attention_names()))
    if unknown:
        print(f"unknown mechanism(s): {', '.join(unknown)}; known: {', '.join(attention_names())}", file=sys.stderr)
        return 2
    sections = [s for s in args.sections.split(",") if s]
    bad = sorted(set(sections) - set(SECTIONS))
    if bad:
        print(f"unknown section(s): {', '.join(bad)}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    skip = {s for s in args.skip.split(",") if s} | (set(SECTIONS) - set(sections))
    zoo_sections = set(SECTIONS) - {"size"} - skip
    resolutions = [int(r) for r in args.resolutions.split(",")]
    lat_res = [int(r) for r in args.latency_resolutions.split(",")]
    core_res = [int(r) for r in args.core_resolutions.split(",") if r]
    runtimes = [r for r in args.runtimes.split(",") if r]
    targets = [t for t in args.targets.split(",") if t]
    data: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_avg": [round(x, 2) for x in os.getloadavg()], "torch": torch.__version__},
        "settings": {"resolutions": resolutions, "latency_resolutions": lat_res, "depth": args.depth,
                     "batch_size": args.batch_size,
                     "runtimes": runtimes, "targets": targets, "status_scale": args.status_scale, "epochs": args.epochs,
                     "train_limit": args.train_limit, "test_limit": args.test_limit, "threads": args.threads,
                     "runs": args.runs, "warmup": args.warmup, "patch": PATCH},
        "mechanisms": {m: {"describe": described[m]} for m in mechs},
    }
    # Measuring only the size options never replaces the zoo's (hours-long) results: always a merge.
    if (args.merge or not zoo_sections) and json_path.exists():
        old = json.loads(json_path.read_text())
        for key in ("resolutions", "latency_resolutions", "runtimes", "targets"):
            merged = list(old.get("settings", {}).get(key, []))
            merged += [v for v in data["settings"][key] if v not in merged]
            data["settings"][key] = sorted(merged) if key.endswith("resolutions") else merged
        owners = {"depth": "latency", "runs": "latency", "warmup": "latency", "status_scale": "export",
                  "epochs": "train", "train_limit": "train", "test_limit": "train", "batch_size": "train"}
        for key, section in owners.items():
            if section in skip and key in old.get("settings", {}):
                data["settings"][key] = old["settings"][key]
        for m, row in old.get("mechanisms", {}).items():
            # old measurements stay; this run's measurements overwrite them key by key
            data["mechanisms"][m] = {**row, **({"describe": described[m]} if m in described else {})}
        data["started"] = old.get("started", data["started"])
        if not zoo_sections:  # only the size options run: the zoo's run record stays as it was
            for key in ("machine", "finished"):
                if key in old:
                    data[key] = old[key]
            data["settings"]["threads"] = old.get("settings", {}).get("threads", args.threads)
        if "size_options" in old:
            data["size_options"] = old["size_options"]
        rank = {name: i for i, name in enumerate(described)}
        data["mechanisms"] = dict(sorted(data["mechanisms"].items(), key=lambda kv: rank.get(kv[0], len(rank))))

    def save() -> None:
        json_path.write_text(json.dumps(data, indent=1, default=str))

    def note(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="edgevit-zoo-") as tmp:
        work = Path(tmp)
        if "costs" not in skip:
            for m in mechs:
                for r in resolutions:
                    note(f"costs {m} @{r}")
                    try:
                        data["mechanisms"][m].setdefault("costs", {})[str(r)] = measure_costs(m, r)
                    except Exception as exc:
                        data["mechanisms"][m].setdefault("costs", {})[str(r)] = {"error": _blocking_op(exc)}
                    gc.collect()
                save()
        if "core" not in skip:
            for m in mechs:
                note(f"attention MACs {m}")
                for r in sorted(set(resolutions) | set(core_res)):
                    try:
                        data["mechanisms"][m].setdefault("core", {})[str(r)] = core_attention_macs(m, r) / 1e9
                    except Exception as exc:
                        data["mechanisms"][m].setdefault("core", {})[str(r)] = {"error": _blocking_op(exc)}
            save()
        if "latency" not in skip:
            for m in mechs:
                for r in lat_res:
                    note(f"latency {m} @{r} ({args.depth} blocks): {', '.join(runtimes)}")
                    data["mechanisms"][m].setdefault("latency", {})[str(r)] = measure_latency(
                        m, r, args.depth, runtimes, args.threads, args.warmup, args.runs, work)
                save()
        if "export" not in skip:
            prefix = "vit_fmnist_" if args.status_scale == "fmnist" else "vit_tiny_"
            for m in mechs:
                for t in targets:
                    note(f"export {prefix}{m} -> {t}")
                    data["mechanisms"][m].setdefault("export", {})[t] = export_status(f"{prefix}{m}", t, work)
                save()
        if "train" not in skip:
            for m in mechs:
                note(f"train vit_fmnist_{m}")
                try:
                    data["mechanisms"][m]["train"] = train_top1(m, args.epochs, args.train_limit, args.test_limit,
                                                                args.batch_size, args.threads, work)
                except Exception as exc:
                    data["mechanisms"][m]["train"] = {"error": _blocking_op(exc)}
                save()
        if "size" not in skip:
            def save_size(part: dict[str, Any]) -> None:
                data["size_options"] = part
                save()

            size_targets = [t for t in args.size_targets.split(",") if t]
            data["size_options"] = size_options(data["settings"], size_targets, args.threads, work, note, save_size)
            save()
    if zoo_sections or "finished" not in data:
        data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    (out / "attention_zoo.md").write_text(build_report(data))
    plot(data, out / "attention_zoo.png")
    note(f"wrote {json_path}, {out / 'attention_zoo.md'}, {out / 'attention_zoo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
