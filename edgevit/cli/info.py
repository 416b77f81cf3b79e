"""``edgevit info``: one model source in full (a catalog entry, timm:NAME, hf:ORG/NAME, a folder)."""

from __future__ import annotations

import argparse

COMMAND = "info"
HELP = "show one model: its input, preprocessing, labels and attention kind"
EXAMPLES = ["edgevit info mobilevit_xxs", "edgevit info deit_tiny_patch16_224 --json",
            "edgevit info timm:vit_small_patch16_224", "edgevit info ./my-hf-vit"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from edgevit.cli._common import MODEL_SOURCE_HELP

    p.add_argument("model", help=MODEL_SOURCE_HELP)


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json
    from edgevit.models import get_spec

    spec = get_spec(args.model)
    d = spec.to_dict()
    if not spec.params_m:  # a source outside the catalog: count its parameters (builds it, no weights)
        from edgevit.models import create_model

        model = create_model(args.model)
        d["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 3)
        d["gmacs"] = None  # not measured (`edgevit profile` counts them)
    if args.json:
        emit_json(d)
        return 0
    from edgevit._text import safe_text

    width = max(len(k) for k in d)
    for k, v in d.items():
        if isinstance(v, dict):
            v = "; ".join(f"{a}: {b}" for a, b in v.items()) or "-"
        elif isinstance(v, list) and k in ("labels", "notes"):
            shown = [str(x) for x in v[:8]]
            v = ("; " if k == "notes" else ", ").join(shown) + (f", ... ({len(v)} in all)" if len(v) > 8 else "") or "-"
        print(safe_text(f"{k.ljust(width)}  {v if v not in (None, '') else '-'}"))
    return 0
