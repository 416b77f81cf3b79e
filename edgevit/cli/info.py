"""``edgevit info``: one catalog entry in full."""

from __future__ import annotations

import argparse

COMMAND = "info"
HELP = "show one catalog model"
EXAMPLES = ["edgevit info mobilevit_xxs", "edgevit info deit_tiny_patch16_224 --json"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="catalog model name")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json
    from edgevit.models import get_spec

    spec = get_spec(args.model)
    d = spec.to_dict()
    if args.json:
        emit_json(d)
        return 0
    from edgevit._text import safe_text

    width = max(len(k) for k in d)
    for k, v in d.items():
        if isinstance(v, dict):
            v = "; ".join(f"{a}: {b}" for a, b in v.items()) or "-"
        print(safe_text(f"{k.ljust(width)}  {v if v not in (None, '') else '-'}"))
    return 0
