"""``edgevit report``: the results store as one self-contained HTML page.

Inline CSS, plots as inline SVG drawn here (no matplotlib needed, text stays selectable), a few
lines of inline JavaScript to sort tables; nothing is fetched from the network. Sections:

* overview: one row per model x target x precision with its latest size, latency, memory,
  efficiency, accuracy and export verification;
* bench: every bench run, and a latency chart;
* profile: MACs and activation memory per model and resolution, with charts;
* eval and exports: every run.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgevit._version import __version__
from edgevit.measure.bench import MEMORY_TARGET_RATIO
from edgevit.measure.results import ResultsStore, Run

__all__ = ["render_report", "write_report"]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:36px;border-bottom:2px solid #ddd;padding-bottom:4px}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:12px 0;font-size:.85em;width:100%}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#f4f4f4;cursor:pointer;user-select:none}th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
td.text,th.text{text-align:left}td.text{white-space:normal;overflow-wrap:anywhere;max-width:22em}tr:nth-child(even) td{background:#fafafa}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.empty{color:#888;font-style:italic}.charts{display:flex;flex-wrap:wrap;gap:16px}
svg{background:#fff;border:1px solid #eee}
.scroll{overflow-x:auto}
"""

_JS = """
(function(){
  function key(td){var v=td.getAttribute('data-v');if(v!==null&&v!==''&&!isNaN(+v))return +v;return td.textContent.trim().toLowerCase();}
  var tables=document.querySelectorAll('table.sortable');
  tables.forEach(function(t){
    t.querySelectorAll('th').forEach(function(th,i){
      th.addEventListener('click',function(){
        var body=t.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=!th.classList.contains('sorted-asc');
        rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);return (x>y?1:x<y?-1:0)*(asc?1:-1);});
        rows.forEach(function(r){body.appendChild(r);});
        t.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
        th.classList.add(asc?'sorted-asc':'sorted-desc');
      });
    });
    t.setAttribute('data-sortable','ready');
  });
  var s=document.getElementById('rendered');
  if(s){s.textContent='interactive: '+tables.length+' sortable tables';s.setAttribute('data-tables',tables.length);}
})();
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, fmt: str) -> tuple[str, str]:
    """(display text, sort value) for a number that may be missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-", ""
    try:
        return fmt.format(v), repr(float(v))
    except (TypeError, ValueError):
        return str(v), ""


class _Table:
    def __init__(self, columns: Sequence[tuple[str, str]], css_id: str) -> None:
        self.columns = columns  # (header, kind) kind: text | num
        self.rows: list[list[tuple[str, str, str]]] = []  # (html, sort value, extra class)
        self.id = css_id

    def add(self, cells: Sequence[Any]) -> None:
        row = []
        for (header, kind), cell in zip(self.columns, cells):
            if isinstance(cell, tuple):  # (text, sort) or (text, sort, class)
                text, sort = cell[0], cell[1]
                cls = cell[2] if len(cell) > 2 else ""
                row.append((_e(text), sort, cls))
            else:
                row.append((_e("-" if cell is None else cell), "", ""))
        self.rows.append(row)

    def html(self) -> str:
        if not self.rows:
            return '<p class="empty">no runs recorded</p>'
        head = "".join(
            f'<th class="{"text" if kind == "text" else "num"}">{_e(h)}</th>' for h, kind in self.columns
        )
        body = []
        for row in self.rows:
            tds = []
            for (text, sort, cls), (_, kind) in zip(row, self.columns):
                classes = " ".join(c for c in ("text" if kind == "text" else "", cls) if c)
                attr = f' data-v="{_e(sort)}"' if sort != "" else ""
                tds.append(f'<td class="{classes}"{attr}>{text}</td>' if classes else f"<td{attr}>{text}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        return (
            f'<div class="scroll"><table class="sortable" id="{_e(self.id)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>"
        )


# --------------------------------------------------------------------------------------------
# SVG charts


def _fmt_tick(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def _bar_chart(items: Sequence[tuple[str, float]], title: str, unit: str, width: int = 620) -> str:
    """Horizontal bars, one per (label, value)."""
    if not items:
        return ""
    bar_h, gap, left, right, top = 18, 6, 300, 70, 30
    height = top + len(items) * (bar_h + gap) + 10
    vmax = max(v for _, v in items) or 1.0
    scale = (width - left - right) / vmax
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{_e(title)}">',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="600">{_e(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = top + i * (bar_h + gap)
        w = max(1.0, value * scale)
        color = _PALETTE[i % len(_PALETTE)]
        parts.append(f'<text x="{left - 6}" y="{y + bar_h - 5}" text-anchor="end" font-size="11">{_e(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"><title>{_e(label)}: {value:.3g} {_e(unit)}</title></rect>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 5}" font-size="11">{_fmt_tick(value)} {_e(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _line_chart(
    series: Mapping[str, Sequence[tuple[float, float]]], title: str, xlabel: str, ylabel: str, log_y: bool = True,
    width: int = 620, height: int = 360,
) -> str:
    """Lines with markers, one per series name; log-scaled y by default."""
    pts = [p for s in series.values() for p in s if p[1] > 0 or not log_y]
    if not pts:
        return ""
    left, top, bottom = 60, 30, 45
    right = int(max(120, 6.0 * max(len(n) for n in series) + 40))
    width = max(width, right + 420)
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    if log_y:
        y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
        if y0 == y1:
            y1 += 1
    else:
        y0, y1 = 0.0, max(ys) * 1.1 or 1.0

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        v = math.log10(y) if log_y else y
        return top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{_e(title)}">',
        f'<text x="{(width - right + left) / 2}" y="18" text-anchor="middle" font-size="13" font-weight="600">{_e(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#444"/>',
    ]
    ticks = [10.0**k for k in range(int(y0), int(y1) + 1)] if log_y else [y1 * i / 4 for i in range(5)]
    for t in ticks:
        y = py(t) if (t > 0 or not log_y) else None
        if y is None:
            continue
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_fmt_tick(t)}</text>')
    for xv in sorted(set(xs)):
        x = px(xv)
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" font-size="10">{_fmt_tick(xv)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 8}" text-anchor="middle" font-size="11">{_e(xlabel)}</text>')
    parts.append(
        f'<text x="14" y="{(top + height - bottom) / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 14 {(top + height - bottom) / 2})">{_e(ylabel)}</text>'
    )
    for i, (name, s) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        s = sorted(p for p in s if p[1] > 0 or not log_y)
        if not s:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for x, y in s:
            parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{color}"><title>{_e(name)} @ {x:g}: {y:.4g}</title></circle>')
        ly = top + 14 + i * 16
        parts.append(f'<rect x="{width - right + 10}" y="{ly - 9}" width="12" height="4" fill="{color}"/>')
        parts.append(f'<text x="{width - right + 26}" y="{ly - 4}" font-size="10">{_e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------
# Sections


def _latest(runs: Iterable[Run], key) -> dict[Any, Run]:
    out: dict[Any, Run] = {}
    for r in runs:  # oldest first: later runs replace earlier ones
        out[key(r)] = r
    return out


def _pct(v: Any) -> tuple[str, str]:
    return _num(None if v is None else 100.0 * v, "{:.2f}")


def _variant(r: Run) -> str:
    """Precision plus the variant flags that make a different artifact (fused input stage)."""
    d = r.data
    fused = d.get("fused_input") or (d.get("details") or {}).get("fused_input")
    return f"{r.precision or '?'}{' fused-input' if fused else ''}"


def _artifact_key(r: Run) -> str:
    """The artifact a run is about (its resolved path), so that two files of one name, or one
    model exported with two sets of weights, stay two rows; runs without a file (torch eager)
    are keyed by model, target and precision."""
    path = r.data.get("path") if r.kind == "export" else r.artifact or r.data.get("artifact")
    if path:
        return os.path.realpath(str(path))
    return f"{r.model}|{r.target}|{_variant(r)}|{r.data.get('name') or ''}"


def _when(r: Run) -> str:
    return r.created.replace("T", " ")[:16]


def _overview(bench: list[Run], evals: list[Run], exports: list[Run]) -> str:
    keys: dict[str, dict[str, Run]] = {}
    for kind, runs in (("bench", bench), ("eval", evals), ("export", exports)):
        for k, r in _latest(runs, _artifact_key).items():
            keys.setdefault(k, {})[kind] = r
    t = _Table(
        [("artifact", "text"), ("model", "text"), ("target", "text"), ("precision", "text"), ("weights", "text"),
         ("size MB", "num"), ("median ms", "num"), ("peak RSS MB", "num"), ("efficiency %", "num"),
         ("top-1 %", "num"), ("eval set", "text"), ("verification", "text")],
        "overview",
    )
    names = _distinct([k for k in keys])
    rows = []
    for key, by in keys.items():
        any_run = by.get("export") or by.get("bench") or by.get("eval")
        b = by.get("bench").data if "bench" in by else {}
        e = by.get("eval").data if "eval" in by else {}
        x = by.get("export").data if "export" in by else {}
        size = b.get("size_mb") if b else (x.get("bytes") / 1e6 if x.get("bytes") else None)
        ver = (x.get("verification") or {}) if x else {}
        passed = ver.get("passed")
        ver_text = "-" if not ver else ("pass" if passed else "FAIL" if passed is not None else "ran")
        weights = x.get("weights") or e.get("weights") or b.get("weights") or "-"
        rows.append((any_run.model or "?", any_run.target or "?", [
            names[key] if "|" not in key else any_run.data.get("name") or f"{any_run.target}:{any_run.model}",
            any_run.model or "?", any_run.target or "?",
            _variant(any_run), weights, _num(size, "{:.2f}"), _num(b.get("median_ms"), "{:.2f}"),
            _num(b.get("peak_rss_mb"), "{:.1f}"), _num(b.get("efficiency_pct"), "{:.1f}"), _pct(e.get("top1")),
            f"{e['dataset']} ({e.get('split', 'test')}, {e['n']})" if e else "-",
            (ver_text, "", "pass" if passed else "fail" if passed is False else ""),
        ]))
    for _, _, cells in sorted(rows, key=lambda r: (r[0], r[1], str(r[2][0]))):
        t.add(cells)
    return t.html()


def _distinct(keys: list[str]) -> dict[str, str]:
    from edgevit._text import distinct_names

    files = [k for k in keys if "|" not in k]
    return dict(zip(files, distinct_names(files)))


def _bench_section(runs: list[Run]) -> str:
    # 13 columns: fits a 1400 px page; the JSON in the database keeps every field.
    t = _Table(
        [("when", "text"), ("artifact", "text"), ("model", "text"), ("runtime / precision", "text"),
         ("threads", "num"), ("size MB", "num"), ("load ms", "num"), ("cold start ms", "num"), ("median ms", "num"),
         ("p90 ms", "num"), ("peak RSS MB", "num"), ("efficiency %", "num"), ("host", "text")],
        "bench",
    )
    names = _distinct([_artifact_key(r) for r in runs])
    for r in runs:
        d = r.data
        key = _artifact_key(r)
        t.add([
            _when(r), names.get(key, d.get("name") or r.artifact), r.model, f"{r.runtime} / {r.precision}",
            _num(d.get("threads"), "{:d}"), _num(d.get("size_mb"), "{:.2f}"), _num(d.get("load_ms"), "{:.1f}"),
            _num(d.get("cold_start_ms"), "{:.0f}"), _num(d.get("median_ms"), "{:.2f}"), _num(d.get("p90_ms"), "{:.2f}"),
            _num(d.get("peak_rss_mb"), "{:.1f}"), _num(d.get("efficiency_pct"), "{:.1f}"), r.host,
        ])
    latest = _latest(runs, lambda r: (r.model, r.target, r.precision, r.runtime, r.data.get("name")))
    items = sorted(
        ((f"{r.data.get('name') or r.model} ({r.runtime})", float(r.data["median_ms"]))
         for r in latest.values() if r.data.get("median_ms") is not None),
        key=lambda kv: kv[1],
    )
    chart = _bar_chart(items, "median latency, batch 1 (latest run of each)", "ms")
    targets = []
    for r in latest.values():
        d = r.data
        if d.get("memory_ratio") is not None:
            ok = d["memory_ratio"] <= MEMORY_TARGET_RATIO
            targets.append(f'<li>{_e(d.get("name"))}: memory {d["memory_ratio"]:.3f}x the bare interpreter '
                           f'(target &le; {MEMORY_TARGET_RATIO}x) <span class="{"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span></li>')
        if d.get("runtime") == "tflite" and d.get("cold_start_ms") is not None:
            ok = d["cold_start_ms"] < 500
            targets.append(f'<li>{_e(d.get("name"))}: cold start {d["cold_start_ms"] / 1e3:.3f} s (target &lt; 0.5 s) '
                           f'<span class="{"pass" if ok else "fail"}">{"PASS" if ok else "FAIL"}</span></li>')
    tgt = f"<h3>Targets</h3><ul>{''.join(targets)}</ul>" if targets else ""
    return t.html() + (f'<div class="charts">{chart}</div>' if chart else "") + tgt


def _profile_section(runs: list[Run]) -> str:
    latest = _latest(runs, lambda r: (r.model, tuple(r.data.get("resolution", [r.resolution]))))
    t = _Table(
        [("model", "text"), ("attention", "text"), ("resolution", "num"), ("params M", "num"), ("GMACs", "num"),
         ("attn QK^T GMACs", "num"), ("attn AV GMACs", "num"), ("attention share %", "num"),
         ("peak activation MB", "num"), ("attention matrix MB", "num")],
        "profile",
    )
    macs: dict[str, list[tuple[float, float]]] = {}
    mem: dict[str, list[tuple[float, float]]] = {}
    for (model, res), r in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        d = r.data
        comps = d.get("components", {})
        score = comps.get("attn_score", {}).get("macs", 0)
        value = comps.get("attn_value", {}).get("macs", 0)
        total = d.get("macs") or 0
        matrix = comps.get("attn_score", {}).get("max_tensor_bytes", 0)
        t.add([
            model, d.get("attention", ""), _num(res[0], "{:d}"), _num(d.get("params_m"), "{:.2f}"),
            _num(d.get("gmacs"), "{:.3f}"), _num(score / 1e9, "{:.3f}"), _num(value / 1e9, "{:.3f}"),
            _num(100.0 * (score + value) / total if total else None, "{:.1f}"),
            _num(d.get("peak_activation_mb"), "{:.1f}"), _num(matrix / 1e6, "{:.2f}"),
        ])
        label = f"{model} ({d.get('attention', '')})"
        macs.setdefault(label, []).append((float(res[0]), float(d.get("gmacs") or 0)))
        mem.setdefault(label, []).append((float(res[0]), float(d.get("peak_activation_mb") or 0)))
    charts = ""
    if any(len(v) > 1 for v in macs.values()):
        charts = (
            '<div class="charts">'
            + _line_chart(macs, "compute vs resolution", "input resolution (px)", "GMACs")
            + _line_chart(mem, "peak activation memory vs resolution", "input resolution (px)", "MB")
            + "</div>"
        )
    return t.html() + charts


def _eval_section(runs: list[Run]) -> str:
    t = _Table(
        [("when", "text"), ("evaluated", "text"), ("model", "text"), ("target", "text"), ("precision", "text"),
         ("dataset", "text"), ("n", "num"), ("top-1 %", "num"), ("top-5 %", "num"), ("agreement w/ float %", "num"),
         ("weights", "text")],
        "eval",
    )
    for r in runs:
        d = r.data
        t.add([
            r.created, d.get("name"), r.model, r.target, r.precision, f"{d.get('dataset')} ({d.get('split')})",
            _num(d.get("n"), "{:d}"), _pct(d.get("top1")), _pct(d.get("top5")), _pct(d.get("agreement_top1")),
            d.get("weights"),
        ])
    return t.html()


def _export_section(runs: list[Run]) -> str:
    t = _Table(
        [("when", "text"), ("model", "text"), ("target", "text"), ("precision", "text"), ("artifact", "text"),
         ("size MB", "num"), ("seconds", "num"), ("verification", "text"), ("delegated %", "num"), ("fallbacks", "text")],
        "exports",
    )
    for r in runs:
        d = r.data
        ver = d.get("verification") or {}
        passed = ver.get("passed")
        summary = ver.get("summary") or ("pass" if passed else "FAIL" if passed is False else "-")
        dele = d.get("delegation") or {}
        t.add([
            r.created, r.model, r.target, r.precision, os.path.basename(str(d.get("path") or r.artifact or "")),
            _num((d.get("bytes") or 0) / 1e6, "{:.2f}"), _num(d.get("seconds"), "{:.1f}"),
            (summary, "", "pass" if passed else "fail" if passed is False else ""),
            _pct(dele.get("share")), ", ".join(d.get("fallbacks") or []) or "-",
        ])
    return t.html()


def render_report(db: str | os.PathLike | ResultsStore | None = None, title: str = "edgevit results",
                  folder: str | os.PathLike | None = None) -> str:
    """The HTML page for the results in ``db`` (default: the default results database); with
    ``folder``, only the runs recorded from that working folder."""
    from edgevit.measure.results import describe_store

    own = not isinstance(db, ResultsStore)
    store = ResultsStore(db, create=False) if own else db
    try:
        runs = {k: store.runs(k, folder=folder) for k in ("bench", "profile", "eval", "export")}
        path = store.path
    finally:
        if own:
            store.close()
    every = [r for rs in runs.values() for r in rs]
    models = sorted({r.model for r in every if r.model})
    folders = sorted({r.folder for r in every if r.folder})
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    scope = f"the runs recorded in {_e(folder)}" if folder is not None else "every run"
    mixed = ""
    if folder is None and len(folders) > 1:
        mixed = (f'<p class="meta fail">This page mixes runs from {len(folders)} working folders ('
                 f'{_e(", ".join(folders[:6]))}{", ..." if len(folders) > 6 else ""}); '
                 "<code>edgevit report --here</code> keeps the current folder's.</p>")
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">generated {now} by edgevit {_e(__version__)} from {scope} in {_e(path)}: '
        f'{_e(describe_store(every))}; {len(models)} model(s). <span id="rendered">static</span></p>',
        mixed,
        "<h2 id=\"overview-h\">Overview: models x targets x precisions (latest run of each)</h2>",
        _overview(runs["bench"], runs["eval"], runs["export"]),
        "<h2 id=\"bench-h\">Benchmarks</h2>",
        '<p class="meta">Each artifact ran in a fresh process; efficiency = 2 x MACs / median latency as a share '
        "of the machine's GEMM peak measured in the same run.</p>",
        _bench_section(runs["bench"]),
        "<h2 id=\"profile-h\">Profile: compute and memory vs resolution</h2>",
        '<p class="meta">MACs of matmuls and convolutions (FLOPs = 2 x MACs); activation memory of an eager fp32 '
        "forward at batch 1; attention share = QK^T + AV products.</p>",
        _profile_section(runs["profile"]),
        "<h2 id=\"eval-h\">Accuracy</h2>",
        _eval_section(runs["eval"]),
        "<h2 id=\"exports-h\">Exports</h2>",
        _export_section(runs["export"]),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(title)}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(body)}<script>{_JS}</script></body></html>\n"
    )


def write_report(out: str | os.PathLike, db: str | os.PathLike | ResultsStore | None = None,
                 title: str = "edgevit results", folder: str | os.PathLike | None = None) -> Path:
    """Render the report and write it to ``out``; returns the path."""
    path = Path(out)
    text = render_report(db, title, folder)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True)
    path.write_text(text, encoding="utf-8")
    return path
