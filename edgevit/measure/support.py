"""The support table: per catalog model and target, whether export + verification passed.

The table is generated from code and data, never by hand: ``models/support.json`` is written by
the full-matrix run (``python benchmarks/matrix.py``), and catalog entries' ``known_issues`` name
the failing op where one is known. ``python -m edgevit.measure.support --markdown`` prints the README's
table, ``--write-readme`` puts it there; a test checks the README carries exactly that.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SUPPORT_FILE", "load_support", "support_markdown", "support_table"]

SUPPORT_FILE = Path(__file__).resolve().parents[2] / "models" / "support.json"

LEGEND = (
    "verified: exported at fp32 and matched the float model on real photos (top-1, cosine, max abs diff); "
    "structural: converted and validated structurally (CoreML predicts only on macOS, not run here); "
    "fails (op): export fails at that op; untested: not in the last full-matrix run."
)


def _support_file() -> Path:
    try:
        import edgevit.models as models

        return Path(models.__file__).parent / "support.json"
    except ImportError:  # pragma: no cover
        return SUPPORT_FILE


def load_support() -> dict[str, Any]:
    path = _support_file()
    if not path.is_file():
        return {"results": {}}
    return json.loads(path.read_text())


def _cell(entry: dict[str, Any] | None, known_issue: str | None) -> dict[str, Any]:
    if entry is None:
        if known_issue:
            return {"status": f"fails ({known_issue})"}
        return {"status": "untested"}
    status = entry.get("status", "untested")
    if status == "failed":
        op = entry.get("op") or known_issue or "see notes"
        return {**entry, "status": f"fails ({op})"}
    return dict(entry)


def support_table(names: Sequence[str] | None = None) -> dict[str, Any]:
    from edgevit.converters import available_targets
    from edgevit.models import get_spec, list_models

    names = list(names) if names is not None else list_models(builtin_only=True)
    targets = list(available_targets())
    results = load_support().get("results", {})
    rows = []
    for name in names:
        spec = get_spec(name)
        cells = {t: _cell(results.get(name, {}).get(t), spec.known_issues.get(t)) for t in targets}
        rows.append({"model": name, "attention": spec.attention, "targets": cells})
    return {"targets": targets, "rows": rows, "legend": LEGEND}


def support_markdown(names: Sequence[str] | None = None) -> str:
    table = support_table(names)
    targets = table["targets"]
    lines = ["| model | attention | " + " | ".join(targets) + " |", "|---|---|" + "---|" * len(targets)]
    for r in table["rows"]:
        lines.append(f"| {r['model']} | {r['attention']} | " + " | ".join(r["targets"][t]["status"] for t in targets) + " |")
    return "\n".join(lines) + "\n\n" + table["legend"] + "\n"


START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def readme_with_table(readme: str, table: str) -> str:
    """``readme`` with the text between the support-table markers replaced by ``table``."""
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}{END}{tail}"


if __name__ == "__main__":  # pragma: no cover
    if "--write-readme" in sys.argv:
        readme = Path(__file__).resolve().parents[2] / "README.md"
        readme.write_text(readme_with_table(readme.read_text(), support_markdown()))
    elif "--markdown" in sys.argv:
        sys.stdout.write(support_markdown())
    else:
        json.dump(support_table(), sys.stdout, indent=1)
