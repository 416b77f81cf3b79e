"""``edgevit report``: render the results database as a self-contained HTML page."""

from __future__ import annotations

import argparse

COMMAND = "report"
HELP = "render stored profile/bench/eval/export runs as one self-contained HTML page"
DESCRIPTION = (
    "Render the results database (filled by profile, bench, eval and export) as one HTML file with\n"
    "tables and charts comparing models, targets and precisions. Everything is inline (CSS, SVG\n"
    "charts, a little JavaScript to sort tables): it opens offline in any browser."
)
EXAMPLES = [
    "edgevit report --out report.html",
    "edgevit report --db results.sqlite --out report.html --title 'Pi 5 results'",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--out", "-o", default="edgevit-report.html", help="HTML file to write (default edgevit-report.html)")
    p.add_argument("--title", default="edgevit results", help="page title")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json
    from edgevit.measure.report import write_report
    from edgevit.measure.results import ResultsStore

    with ResultsStore(args.db, create=False) as store:
        counts = {k: len(store.runs(k)) for k in ("profile", "bench", "eval", "export")}
        path = write_report(args.out, store, args.title)
        db_path = str(store.path)
    if args.json:
        emit_json({"out": str(path), "db": db_path, "runs": counts, "bytes": path.stat().st_size})
    else:
        from edgevit._text import safe_text

        total = sum(counts.values())
        print(f"wrote {safe_text(path)} ({path.stat().st_size / 1024:.0f} KB) from {safe_text(db_path)}: {total} runs "
              f"({', '.join(f'{v} {k}' for k, v in counts.items())})")
    return 0
