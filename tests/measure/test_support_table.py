"""The README's support table is generated from the code and the last full-matrix run."""

from __future__ import annotations

from pathlib import Path

from edgevit.measure.support import END, START, support_markdown, support_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_table_is_the_generated_one():
    text = README.read_text()
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == support_markdown().strip(), "run: python -m edgevit.measure.support --write-readme"


def test_table_covers_every_model_and_target():
    from edgevit.converters import available_targets
    from edgevit.models import list_models

    table = support_table()
    assert table["targets"] == list(available_targets())
    assert [r["model"] for r in table["rows"]] == list_models(builtin_only=True)  # not models registered at run time
    allowed = ("verified", "structural", "untested", "fails (")
    for row in table["rows"]:
        for cell in row["targets"].values():
            assert cell["status"].startswith(allowed), cell
