"""``edgevit report``: render the results database as a self-contained HTML page."""

from __future__ import annotations

import argparse

COMMAND = "report"
HELP = "render stored profile/bench/eval/export runs as one self-contained HTML page"
DESCRIPTION = (
    "Render the results database (filled by profile, bench, eval and export) as one HTML file with\n"
    "tables and charts comparing models, targets and precisions. Everything is inline (CSS, SVG\n"
    "charts, a little JavaScript to sort tables): it opens offline in any browser. One row per\n"
    "artifact. The default database is per user and collects the runs of every folder you work in:\n"
    "the output says what it holds, and --here keeps only the runs recorded from this folder."
)
EXAMPLES = [
    "edgevit report --out report.html",
    "edgevit report --here --out report.html      # only the runs recorded from this folder",
    "edgevit report --db results.sqlite --out report.html --title 'Pi 5 results'",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--out", "-o", default="edgevit-report.html", help="HTML file to write (default edgevit-report.html)")
    p.add_argument("--title", default="edgevit results", help="page title")
    p.add_argument("--here", action="store_true",
                   help="only the runs recorded from the current folder (the default database is shared by "
                        "every folder of this user)")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json
    from edgevit.measure.report import write_report
    from edgevit.measure.results import ResultsStore

    import os

    from edgevit.measure.results import describe_store

    folder = os.getcwd() if args.here else None
    with ResultsStore(args.db, create=False) as store:
        every = store.runs()
        shown = store.runs(folder=folder) if folder else every
        counts = {k: sum(r.kind == k for r in shown) for k in ("profile", "bench", "eval", "export")}
        path = write_report(args.out, store, args.title, folder=folder)
        db_path = str(store.path)
    folders = sorted({r.folder for r in every if r.folder})
    if args.json:
        emit_json({"out": str(path), "db": db_path, "runs": counts, "bytes": path.stat().st_size,
                   "folder": folder, "folders_in_db": folders})
        return 0
    from edgevit._text import safe_text

    print(f"wrote {safe_text(path)} ({path.stat().st_size / 1e3:.0f} KB)")
    print(f"  database {safe_text(db_path)}: {safe_text(describe_store(every))}")
    if folder is not None:
        print(f"  shown: {safe_text(describe_store(shown))} (--here: runs recorded from {safe_text(folder)})")
    elif len(folders) > 1:
        print(f"  note: the page mixes runs from {len(folders)} working folders; --here keeps this folder's")
    return 0
