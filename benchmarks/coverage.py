"""Coverage as a measured figure: which timm architectures export and verify, per target.

Every cell (architecture x target, fp32) is ``edgevit.converters.export("timm:NAME", ...)`` in its
own subprocess, with a time limit; the result (verified / failed / timeout / crashed, seconds,
bytes, cosine, the rewrites applied, the attention modules no rewrite recognised, and for a
failure the op and a one-line reason) is merged into the results JSON after every cell, so a run
that is stopped keeps what it measured.

    python benchmarks/coverage.py --sample                              # the README's sample
    python benchmarks/coverage.py --models 'pit_*' 'cait_xxs*' --targets onnx
    python benchmarks/coverage.py --only-failed                         # rerun what failed
    python benchmarks/coverage.py --report                              # tables from the JSON
    python benchmarks/coverage.py --readme                              # regenerate README section
    python benchmarks/coverage.py --sample --dry-run                    # print the plan

Models are random-init (never ``--pretrained``: no network), re-initialised from a seed so that
no block is degenerate: timm zero-initialises some scales (LeViT's residual BatchNorms, SwinV2's
res-post-norms) and starts layer scales at 1e-5 or 1e-6 (CaiT, PoolFormer, EdgeNeXt, ConvNeXt
blocks), which make a residual branch the identity or nearly so; verification would then pass on
a graph that lost the branch. Here every near-zero scale becomes 0.5 +- 0.1, zero tables get small
random values, biases and norm affines are perturbed and the head is scaled to logits of about 10
(the approach of ``benchmarks/_weights.py``, extended to near-zero layer scales and 2-D tables).

``--snapshot`` runs every cell against a copy of the package sources taken at start, so that
edits made in the working tree during a long run do not mix code versions into one table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results" / "coverage.json"
README = REPO / "README.md"
MARK_START = "<!-- coverage:start -->"
MARK_END = "<!-- coverage:end -->"
DEFAULT_TARGETS = ("tflite", "onnx", "executorch")
STATUSES = ("verified", "failed", "timeout", "crashed")

# --sample: (family, timm glob, how many of the smallest). The first block is the list;
# the second widens the spread (attention kinds and ops not seen in the first). Hi-res variants
# (input over 256 px), distilled twins and the catalog's own timm names are left out.
SAMPLE_FAMILIES: tuple[tuple[str, str, int], ...] = (
    ("PiT", "pit_*", 2),
    ("CaiT", "cait_*", 2),
    ("XCiT", "xcit_*", 2),
    ("TinyViT", "tiny_vit_*", 2),
    ("CoaT", "coat_*", 2),
    ("Twins", "twins_*", 2),
    ("EfficientViT-M", "efficientvit_m*", 2),
    ("EdgeNeXt", "edgenext_*", 2),
    ("ConViT", "convit_*", 1),
    ("CrossViT", "crossvit_*", 2),
    ("RepViT", "repvit_*", 2),
    ("GCViT", "gcvit_*", 2),
    ("MaxViT", "maxvit_*", 2),
    ("DaViT", "davit_*", 1),
    ("Hiera", "hiera_*", 1),
    ("NextViT", "nextvit_*", 1),
    ("PoolFormer", "poolformer*", 2),
    ("MobileNetV4-hybrid", "mobilenetv4_hybrid_*", 2),
    # more families
    ("LeViT", "levit_*", 1),
    ("EfficientFormer", "efficientformer_l*", 1),
    ("EfficientFormerV2", "efficientformerv2_*", 1),
    ("FastViT", "fastvit_*", 1),
    ("MobileViTv2", "mobilevitv2_*", 1),
    ("PVTv2", "pvt_v2_*", 1),
    ("NesT", "nest_*", 1),
    ("CoAtNet", "coatnet_*", 1),
    ("EVA02", "eva02_*", 1),
    ("DeiT3", "deit3_*", 1),
    ("ViT-RoPE", "vit_small_patch16_rope_224", 1),
    ("FocalNet", "focalnet_*", 1),
    ("MViTv2", "mvitv2_*", 1),
    ("VOLO", "volo_*", 1),
    ("SHViT", "shvit_*", 1),
    ("TNT", "tnt_s_patch16_224", 1),
)
_SKIP_NAMES = re.compile(r"(distilled|dagger|_in22k|_384|_408|_448|_512|_lingbot|clip|dinov|siglip|_ns_|_cr_)")

# ------------------------------------------------------------------------------------------------
# The child: one export, one JSON line.

_CHILD = r"""
import json, os, sys, time, traceback
t0 = time.perf_counter()
source, target, out, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
calibrate_bn = len(sys.argv) > 5 and sys.argv[5] == "1"
res = {"status": "failed"}
stage = "import"
rewrites = []

def emit():
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if rewrites and "rewrites" not in res:
        res["rewrites"] = rewrites[-1]
    print("@@RESULT@@" + json.dumps(res, default=str), flush=True)

def chain(exc):
    seen, cur = [], exc
    while cur is not None and len(seen) < 10 and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen

def first_line(e):
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]

try:
    import torch
    from edgevit.errors import EdgeVitError, VerificationError, ConversionError
    from edgevit.converters import export
    from edgevit.models import create_model
    from edgevit.models.weights import save_weights
    try:  # what the edge rewrites did, also when the conversion fails afterwards
        import edgevit.converters.rewrites as _rw
        _orig = _rw.edge_rewrite
        def _capture(*a, **k):
            rep = _orig(*a, **k)
            try:
                rewrites.append(rep.to_dict())
            except Exception:
                pass
            return rep
        _rw.edge_rewrite = _capture
    except Exception:
        pass

    stage = "build"
    num_classes = None
    try:  # a headless default tag (e.g. EVA02's mim_in22k: num_classes 0): give it a 1000-class head
        from edgevit.models._timm import import_timm
        cfg = import_timm().models.get_pretrained_cfg(source.split(":", 1)[1])
        if cfg is not None and not int(getattr(cfg, "num_classes", 1000) or 0):
            num_classes = 1000
            res["num_classes"] = "1000 (its default pretrained config has no classifier)"
    except Exception:
        pass
    torch.manual_seed(0)
    net = create_model(source, num_classes=num_classes)
    res["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 2)
    g = torch.Generator().manual_seed(1)
    scales = tables = 0
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not p.is_floating_point():
                continue
            if name.endswith("bias"):
                p.add_(0.02 * torch.randn(p.shape, generator=g))
            elif p.numel() and p.abs().max() < 1e-3:
                if p.squeeze().dim() <= 1:   # a zero / near-zero scale: its branch would vanish
                    p.copy_(0.5 + 0.1 * torch.randn(p.shape, generator=g)); scales += 1
                else:                         # a zero-initialised table or projection
                    p.copy_(0.02 * torch.randn(p.shape, generator=g)); tables += 1
            elif p.dim() == 1 and "norm" in name:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g))
        head = net.get_classifier() if hasattr(net, "get_classifier") else None
        heads = [head] if isinstance(head, torch.nn.Linear) else (
            [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if isinstance(head, torch.nn.Module) else [])
        for h in heads:
            h.weight.mul_(20.0)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if calibrate_bn and bns:  # BatchNorm statistics of the bundled photos: activations of trained scale
        import numpy as np
        from edgevit.data.samples import natural_photos
        from edgevit.models import get_spec
        spec = get_spec(source)
        h_, w_ = spec.input_size
        mean_, std_ = np.array(spec.mean, dtype=np.float32), np.array(spec.std, dtype=np.float32)
        xs = [torch.from_numpy(((np.asarray(img.convert("RGB").resize((w_, h_)), dtype=np.float32) / 255 - mean_)
                                / std_).transpose(2, 0, 1).copy()) for _, img in natural_photos()]
        for m in bns:
            m.reset_running_stats(); m.momentum = None
        net.train()
        with torch.no_grad():
            net(torch.stack(xs))
        net.eval()
    wpath = os.path.join(out, "coverage_seeded.safetensors")
    save_weights(net, wpath)
    del net
    res["weights"] = (f"seeded re-init: {scales} near-zero scale(s), {tables} zero table(s) made non-zero"
                      + (f"; {len(bns)} BatchNorm(s) recalibrated on the photos" if calibrate_bn and bns else ""))
    stage = "export"
    labels = [f"class_{i}" for i in range(num_classes)] if num_classes else None
    r = export(source, target, out=out, force=True, weights=wpath, num_classes=num_classes, labels=labels)
    d = r.to_dict()
    v = d.get("verification") or {}
    res.update({
        "status": "verified" if v.get("ran") and v.get("passed") else ("structural" if not v.get("ran") else "failed"),
        "exported": True,
        "seconds": d.get("seconds"), "bytes": d.get("bytes"),
        "cosine_min": v.get("cosine_min"), "max_abs_diff": v.get("max_abs_diff"),
        "top1_agreement": v.get("top1_agreement"), "ties": len(v.get("ties") or []),
        "delegated_share": (d.get("delegation") or {}).get("share"),
        "warnings": [w[:300] for w in (d.get("warnings") or [])][:4],
    })
    if (d.get("details") or {}).get("rewrites") is not None:
        res["rewrites"] = d["details"]["rewrites"]
except BaseException as e:  # noqa: BLE001 - everything is a measured outcome here
    if isinstance(e, KeyboardInterrupt):
        raise
    links = chain(e)
    root = links[-1]
    res["exception"] = type(e).__name__
    res["stage"] = stage
    try:
        from edgevit.errors import EdgeVitError, VerificationError
        res["edgevit_error"] = isinstance(e, EdgeVitError)
        if isinstance(e, VerificationError):
            res["stage"] = "verify"
            res["exported"] = True
            rep = getattr(e, "report", None)
            if rep is not None:
                rd = rep.to_dict()
                res["cosine_min"] = rd.get("cosine_min"); res["top1_agreement"] = rd.get("top1_agreement")
                res["max_abs_diff"] = rd.get("max_abs_diff")
    except Exception:
        pass
    res["op"] = getattr(e, "op", None)
    res["error"] = first_line(e)
    res["root"] = f"{type(root).__name__}: {first_line(root)}"
    tb = traceback.extract_tb(root.__traceback__) if root.__traceback__ else []
    if tb:
        f = tb[-1]
        res["where"] = f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
    res["chain_text"] = " || ".join(first_line(x) for x in links)[:1500]
emit()
"""


def _child_env(snapshot: Path | None) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONWARNINGS="ignore", TF_CPP_MIN_LOG_LEVEL="2")
    if snapshot is not None:
        env["PYTHONPATH"] = str(snapshot) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_cell(arch: str, target: str, timeout: int, snapshot: Path | None = None, nice: int = 0,
             calibrate_bn: bool = False) -> dict:
    """Export ``timm:arch`` to ``target`` in a subprocess; the measured outcome as a dict."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgevit-coverage-") as out:
        cmd = [sys.executable, "-c", _CHILD, f"timm:{arch}", target, out, str(timeout), "1" if calibrate_bn else "0"]
        if nice:
            cmd = ["nice", "-n", str(nice)] + cmd
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_child_env(snapshot), cwd=out, start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return {"status": "timeout", "stage": "export", "op": None, "reason": f"timed out after {timeout} s",
                    "wall_seconds": round(time.perf_counter() - start, 1)}
    for line in stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            r = json.loads(line[len("@@RESULT@@"):])
            if r["status"] != "verified":
                r.setdefault("op", None)
                r["op"] = r.get("op") or _op_from_text(r.get("chain_text") or r.get("error") or "")
                r["reason"] = _reason(r)
            return r
    tail = [ln for ln in (stderr or stdout).strip().splitlines() if ln.strip()][-4:]
    sig = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    text = " | ".join(tail)
    return {"status": "crashed", "stage": "export", "op": _op_from_text(text),
            "reason": f"process died ({sig}): {tail[-1][:200] if tail else 'no output'}",
            "error": text[:600], "wall_seconds": round(time.perf_counter() - start, 1)}


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own session: it and its workers only
    except (ProcessLookupError, PermissionError):
        proc.kill()


_OP_RES = (
    re.compile(r"op='(aten\.[A-Za-z_0-9]+)', overload='([A-Za-z_0-9]+)'"),
    re.compile(r"'(tfl\.[a-z_0-9]+|stablehlo\.[a-z_0-9]+)'"),
    re.compile(r"\b(aten[.:]{1,2}[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?)"),
    re.compile(r"\b(torchvision[.:]{1,2}[A-Za-z_0-9]+)"),
    re.compile(r"\b(prims[.:]{1,2}[A-Za-z_0-9]+)"),
)


def _op_from_text(text: str) -> str | None:
    for pattern in _OP_RES:
        m = pattern.search(text)
        if m:
            op = m.group(1).replace("::", ".")
            if m.lastindex and m.lastindex >= 2 and m.group(2) != "default":
                op = f"{op}.{m.group(2)}"
            return op
    return None


def _reason(r: dict) -> str:
    """One line: why the cell failed (the innermost cause where it says more than the wrapper)."""
    if r.get("stage") == "verify":
        cos = r.get("cosine_min")
        agree = r.get("top1_agreement")
        return (f"artifact does not match the float model (cosine min {cos:.4f}, top-1 agreement {agree:.0%})"
                if isinstance(cos, float) and isinstance(agree, float) else (r.get("error") or "")[:200])
    if r.get("status") in ("timeout", "crashed"):
        return r.get("reason") or ""
    root = r.get("root") or ""
    err = r.get("error") or ""
    # the innermost cause names the problem; the wrapper's text is edgevit's framing of it
    text = root if root and not root.startswith(("ConversionError", "VerificationError")) else err
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"/(?:[\w.-]+/)+", "", text)
    return text.strip()[:220]


def _signature(r: dict) -> str:
    """A grouping key for failures: the op where known, else the reason with numbers and names
    of tensors/modules blurred."""
    if r.get("status") == "timeout":
        return "timeout"
    if r.get("stage") == "verify":
        return "verification: artifact differs from the float model"
    reason = r.get("reason") or ""
    blurred = re.sub(r"\d+", "N", reason)
    blurred = re.sub(r"'[^']{0,80}'", "'…'", blurred)
    blurred = re.sub(r"\([^()]{40,}\)", "(…)", blurred)
    return blurred[:140]


# ------------------------------------------------------------------------------------------------
# Choosing architectures


def _import_timm():
    from edgevit.models._timm import import_timm

    return import_timm()


def catalog_timm_names() -> set[str]:
    from edgevit.models import get_spec, list_models

    names = set()
    for m in list_models():
        tn = getattr(get_spec(m), "timm_name", None)
        if tn:
            names.add(tn.split(".")[0])
    return names


def count_params(name: str) -> float | None:
    """Millions of parameters, building on the meta device (no memory, no init), else for real."""
    import torch

    timm = _import_timm()
    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False)
    except Exception:  # noqa: BLE001 - some builders compute on real tensors at init
        try:
            m = timm.create_model(name, pretrained=False)
        except Exception:  # noqa: BLE001 - not buildable: left out
            return None
    return sum(p.numel() for p in m.parameters()) / 1e6


def _input_px(name: str) -> int:
    timm = _import_timm()
    cfg = timm.models.get_pretrained_cfg(name)
    size = (cfg.to_dict().get("input_size") if cfg is not None else None) or (3, 224, 224)
    return int(max(size[1:]))


def expand(patterns: list[str], max_params: float, exclude: set[str]) -> list[tuple[str, str, float]]:
    """(family, arch, params M) for every timm architecture matching ``patterns``."""
    timm = _import_timm()
    rows = []
    for pat in patterns:
        for name in sorted(timm.list_models(pat)):
            if name in exclude or any(name == r[1] for r in rows):
                continue
            n = count_params(name)
            if n is None or n >= max_params:
                continue
            rows.append((name.split("_")[0], name, round(n, 2)))
    return rows


def sample(max_params: float, exclude: set[str]) -> tuple[list[tuple[str, str, float]], dict[str, str]]:
    """The smallest variants per family, ordered round-robin over families (so that a run cut
    short still spans them all); and, per family that gave fewer than asked, why."""
    timm = _import_timm()
    per_family: list[list[tuple[str, str, float]]] = []
    notes: dict[str, str] = {}
    for family, pattern, k in SAMPLE_FAMILIES:
        cands = []
        for name in timm.list_models(pattern):
            if name in exclude or _SKIP_NAMES.search(name) or _input_px(name) > 256:
                continue
            n = count_params(name)
            if n is not None:
                cands.append((n, name))
        cands.sort()
        under = [(n, name) for n, name in cands if n < max_params]
        chosen = [(family, name, round(n, 2)) for n, name in under[:k]]
        if len(chosen) < k:
            smallest = f"; smallest is {cands[0][1]} at {cands[0][0]:.1f} M" if cands else ""
            notes[family] = f"{len(chosen)} of {k}: no more variants under {max_params:g} M parameters{smallest}"
        per_family.append(chosen)
    order = []
    for i in range(max((len(c) for c in per_family), default=0)):
        order.extend(c[i] for c in per_family if i < len(c))
    return order, notes


# ------------------------------------------------------------------------------------------------
# Results file

_LOCK = threading.Lock()


def load(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    return {"results": {}, "architectures": {}}


def record(path: Path, arch: str, family: str, params: float | None, target: str, result: dict) -> None:
    """Merge one cell into ``path`` (re-read each time; written atomically)."""
    with _LOCK:
        data = load(path)
        data.setdefault("architectures", {}).setdefault(arch, {}).update(
            {k: v for k, v in (("family", family), ("params_m", params)) if v is not None})
        data.setdefault("results", {}).setdefault(arch, {})[target] = result
        data["generated_by"] = "python benchmarks/coverage.py"
        data["updated"] = dt.datetime.now().isoformat(timespec="seconds")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)


def _update_meta(path: Path, **fields) -> None:
    with _LOCK:
        data = load(path)
        data.update(fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
# Reports


def _targets_in(data: dict) -> list[str]:
    seen = {t for cells in data.get("results", {}).values() for t in cells}
    return [t for t in (*DEFAULT_TARGETS, "coreml") if t in seen] + sorted(seen - {*DEFAULT_TARGETS, "coreml"})


def summary_rows(data: dict) -> list[dict]:
    rows = []
    for t in _targets_in(data):
        cells = [c[t] for c in data["results"].values() if t in c]
        rows.append({
            "target": t,
            "tried": len(cells),
            "exported": sum(1 for c in cells if c.get("exported") or c["status"] == "verified"),
            "verified": sum(1 for c in cells if c["status"] == "verified"),
            "failed_convert": sum(1 for c in cells if c["status"] == "failed" and c.get("stage") != "verify"),
            "failed_verify": sum(1 for c in cells if c["status"] == "failed" and c.get("stage") == "verify"),
            "timeout": sum(1 for c in cells if c["status"] == "timeout"),
            "crashed": sum(1 for c in cells if c["status"] == "crashed"),
        })
    return rows


def failure_groups(data: dict) -> list[tuple[str, str, list[str]]]:
    """(op, reason, ['target: arch', ...]) for each distinct failure, most frequent first."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    examples: dict[tuple[str, str], str] = {}
    for arch, cells in sorted(data.get("results", {}).items()):
        for t, c in cells.items():
            if c["status"] == "verified":
                continue
            c = {**c, "reason": _reason(c) if (c.get("root") or c.get("error")) else c.get("reason")}
            key = (c.get("op") or "—", _signature(c))
            cos = c.get("cosine_min")
            detail = f" (cos {cos:.6f})" if c.get("stage") == "verify" and isinstance(cos, float) else ""
            groups[key].append(f"{t}: {arch}{detail}")
            examples.setdefault(key, "artifact does not match the float model at fp32 (cosine min, top-1, max abs diff)"
                                if c.get("stage") == "verify" else (c.get("reason") or c.get("error") or ""))
    out = [(op, examples[(op, sig)], members) for (op, sig), members in groups.items()]
    out.sort(key=lambda g: (-len(g[2]), g[0], g[1]))
    return out


def _fmt_cell(c: dict | None) -> str:
    if c is None:
        return ""
    if c["status"] == "verified":
        cos = c.get("cosine_min")
        return f"✓ {c.get('seconds', 0):.0f} s" + (f", 1−cos {max(1 - cos, 0):.0e}" if isinstance(cos, float) else "")
    if c["status"] == "timeout":
        return "timeout"
    op = c.get("op")
    tag = "✗ verify" if c.get("stage") == "verify" else ("✗ crash" if c["status"] == "crashed" else "✗")
    return f"{tag}{f' `{op}`' if op else ''}"


def markdown(data: dict, full: bool = True) -> str:
    lines = []
    rows = summary_rows(data)
    n_arch = len(data.get("results", {}))
    lines.append(f"{n_arch} timm architectures (random-init, seeded so that no block is degenerate), fp32, "
                 "each exported and verified against the float model on the bundled photos.")
    lines.append("")
    lines.append("| target | tried | exported | verified | failed (export) | failed (verify) | timeout | crashed |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(f"| {r['target']} | {r['tried']} | {r['exported']} | {r['verified']} | {r['failed_convert']} | "
                     f"{r['failed_verify']} | {r['timeout']} | {r['crashed']} |")
    groups = failure_groups(data)
    if groups:
        lines.append("")
        lines.append("Failures by op and reason:")
        lines.append("")
        lines.append("| op | reason | cells |")
        lines.append("|---|---|---|")
        for op, reason, members in groups:
            reason = reason.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {'`' + op + '`' if op != '—' else '—'} | {reason[:200]} | {', '.join(members)} |")
    if full:
        targets = _targets_in(data)
        archs = data.get("architectures", {})
        lines.append("")
        lines.append("Per architecture (✓ export seconds and 1 − min cosine vs the float model; ✗ the failing op where "
                     "known; an empty cell is not run yet):")
        lines.append("")
        lines.append("| architecture | family | params (M) | " + " | ".join(targets) + " | rewrites applied | "
                     "attention not recognised |")
        lines.append("|---|---|---:|" + "---|" * len(targets) + "---|---|")
        for arch, cells in sorted(data["results"].items(), key=lambda kv: (archs.get(kv[0], {}).get("family", ""), kv[0])):
            info = archs.get(arch, {})
            counts: dict[str, int] = {}
            unrec_set: set[str] = set()
            for c in cells.values():  # the rules differ per target (e.g. linear_2d on ONNX only)
                rw = c.get("rewrites") or {}
                for k, v in (rw.get("replaced") or {}).items():
                    counts[k] = max(counts.get(k, 0), v)
                unrec_set.update((rw.get("unrecognised") or {}).values())
            replaced = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "—"
            unrec = sorted(unrec_set)
            lines.append(f"| {arch} | {info.get('family', '')} | {info.get('params_m', '')} | "
                         + " | ".join(_fmt_cell(cells.get(t)) for t in targets)
                         + f" | {replaced} | {', '.join(unrec) or '—'} |")
    notes = data.get("sample_notes") or {}
    if notes:
        lines.append("")
        lines.append("Sample notes: " + "; ".join(f"{k}: {v}" for k, v in sorted(notes.items())) + ".")
    return "\n".join(lines) + "\n"


def readme_section(data: dict) -> str:
    when = data.get("updated", "")[:10]
    runs = data.get("runs") or []
    done = sum(len(c) for c in data.get("results", {}).values())
    if runs and "finished" not in runs[-1]:
        when += f"; partial: the run was still going, {done} of {runs[-1].get('cells', '?')} cells measured"
    head = (f"Measured by `python benchmarks/coverage.py --sample` ({when}; full results "
            "[benchmarks/results/coverage.md](benchmarks/results/coverage.md)); this section is generated by "
            "`python benchmarks/coverage.py --readme`.")
    return head + "\n\n" + markdown(data, full=False)


def update_readme(data: dict, readme: Path = README) -> bool:
    """Replace the text between the coverage markers in ``readme``; False if the markers are absent."""
    text = readme.read_text()
    i, j = text.find(MARK_START), text.find(MARK_END)
    if i < 0 or j < i:
        return False
    new = text[: i + len(MARK_START)] + "\n" + readme_section(data) + text[j:]
    if new != text:
        readme.write_text(new)
    return True


# ------------------------------------------------------------------------------------------------


def _snapshot() -> tuple[Path, dict]:
    """A copy of the package sources (edgevit, its models/converters/runtimes) the children import."""
    root = Path(tempfile.mkdtemp(prefix="edgevit-coverage-src-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "edgevit", root / "edgevit", ignore=ignore)
    for sub in ("models", "converters", "runtimes"):
        shutil.copytree(REPO / sub, root / "edgevit" / sub, ignore=ignore, dirs_exist_ok=True)
    h = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return root, {"sources_sha1": h.hexdigest()[:12]}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None, help="timm names or globs (e.g. 'pit_*' cait_xxs24_224)")
    ap.add_argument("--sample", action="store_true", help="the family-spread sample (see SAMPLE_FAMILIES)")
    ap.add_argument("--targets", nargs="*", default=None, help=f"default: {' '.join(DEFAULT_TARGETS)}")
    ap.add_argument("--max-params", type=float, default=30.0, help="millions of parameters (default 30)")
    ap.add_argument("--include-catalog", action="store_true", help="do not leave out the catalog's timm names")
    ap.add_argument("--jobs", type=int, default=1, help="cells run at once (default 1)")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per export (default 600)")
    ap.add_argument("--only-failed", action="store_true", help="rerun the cells that did not verify in --out")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (merged into, cell by cell)")
    ap.add_argument("--md", type=Path, default=None, help="Markdown report (default: --out with .md)")
    ap.add_argument("--snapshot", action="store_true",
                    help="run every cell against a copy of the package sources taken now")
    ap.add_argument("--nice", type=int, default=0, help="niceness of the export subprocesses")
    ap.add_argument("--calibrate-bn", action="store_true",
                    help="also set BatchNorm running statistics from the bundled photos (conv-BN nets whose "
                         "re-initialised activations grow to logits of 1e3 are otherwise ill-conditioned in fp32)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan")
    ap.add_argument("--report", action="store_true", help="only print/write the tables from --out")
    ap.add_argument("--readme", action="store_true", help="regenerate the README coverage section from --out")
    args = ap.parse_args(argv)
    md_path = args.md or args.out.with_suffix(".md")

    if args.report or args.readme:
        data = load(args.out)
        text = markdown(data)
        print(text)
        if args.report:
            md_path.write_text("# Coverage of timm architectures\n\n" + text)
        if args.readme and not update_readme(data):
            print(f"README.md has no {MARK_START} ... {MARK_END} markers", file=sys.stderr)
            return 1
        return 0

    targets = args.targets or list(DEFAULT_TARGETS)
    exclude = set() if args.include_catalog else catalog_timm_names()
    notes: dict[str, str] = {}
    if args.only_failed:
        data = load(args.out)
        archs = data.get("architectures", {})
        plan = []
        for arch, cells in sorted(data.get("results", {}).items()):
            if args.models and not any(fnmatch.fnmatch(arch, p) for p in args.models):
                continue
            for t, c in cells.items():
                if c["status"] != "verified" and (args.targets is None or t in targets):
                    info = archs.get(arch, {})
                    plan.append((info.get("family", arch.split("_")[0]), arch, info.get("params_m"), t))
    else:
        if args.sample:
            rows, notes = sample(args.max_params, exclude)
        else:
            rows = []
        if args.models:
            rows += [r for r in expand(args.models, args.max_params, exclude) if r[1] not in {x[1] for x in rows}]
        if not rows:
            ap.error("nothing to run: pass --models PATTERN ..., --sample or --only-failed")
        plan = [(fam, arch, n, t) for fam, arch, n in rows for t in targets]

    if args.dry_run:
        archs_seen = []
        for fam, arch, n, _ in plan:
            if arch not in [a for a, _ in archs_seen]:
                archs_seen.append((arch, f"{fam:20s} {arch:36s} {n} M"))
        print("\n".join(line for _, line in archs_seen))
        print(f"{len(archs_seen)} architectures, {len(plan)} cells (targets: {' '.join(sorted({p[3] for p in plan}))})")
        for k, v in notes.items():
            print(f"note: {k}: {v}")
        return 0

    snap, snap_info = (None, {})
    if args.snapshot:
        snap, snap_info = _snapshot()
    run_meta = {"started": dt.datetime.now().isoformat(timespec="seconds"), "git_head": _git("rev-parse", "--short", "HEAD"),
                "dirty_files": [ln[3:] for ln in _git("status", "--porcelain", "--", "edgevit", "models", "converters",
                                                      "runtimes").splitlines()],
                "cells": len(plan), "targets": targets, "jobs": args.jobs, "timeout_s": args.timeout,
                "calibrate_bn": args.calibrate_bn,
                "argv": sys.argv[1:], **snap_info}
    data = load(args.out)
    runs = data.get("runs", []) + [run_meta]
    fields = {"runs": runs}
    if notes:
        fields["sample_notes"] = notes
    _update_meta(args.out, **fields)
    print(f"{len(plan)} cells; results -> {args.out}" + (f" (sources {snap_info['sources_sha1']})" if snap else ""),
          flush=True)

    t_start = time.perf_counter()

    def one(item):
        fam, arch, n, t = item
        r = run_cell(arch, t, args.timeout, snap, args.nice, args.calibrate_bn)
        r["date"] = dt.date.today().isoformat()
        if snap_info:
            r["sources_sha1"] = snap_info["sources_sha1"]
        params = r.get("params_m") or n
        record(args.out, arch, fam, params, t, r)
        if r["status"] == "verified":
            extra = (f"{r.get('seconds', 0):.1f} s, {(r.get('bytes') or 0) / 1e6:.1f} MB, cos {r.get('cosine_min')}"
                     f", rewrites {r.get('rewrites', {}).get('replaced')}")
        else:
            extra = f"[{r.get('stage')}] op={r.get('op')} {r.get('reason')}"
        with _LOCK:
            print(f"{arch:32s} {t:11s} {r['status']:9s} {r.get('wall_seconds', 0):6.0f} s  {extra}", flush=True)

    try:
        if args.jobs <= 1:
            for item in plan:
                one(item)
        else:
            with cf.ThreadPoolExecutor(args.jobs) as pool:
                list(pool.map(one, plan))
    finally:
        data = load(args.out)
        data["runs"][-1]["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        data["runs"][-1]["wall_seconds"] = round(time.perf_counter() - t_start)
        _update_meta(args.out, runs=data["runs"])
        text = markdown(load(args.out))
        md_path.write_text("# Coverage of timm architectures\n\n" + text)
        print()
        print(text)
        if snap is not None:
            shutil.rmtree(snap, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
