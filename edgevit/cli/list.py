"""``edgevit list``: the model catalog as a table."""

from __future__ import annotations

import argparse

COMMAND = "list"
HELP = "list catalog models (name, family, attention kind, params, MACs)"
EXAMPLES = ["edgevit list", "edgevit list 'deit*' --attention global", "edgevit list --attention",
            "edgevit list --targets", "edgevit list --json"]


_MECHANISMS = "<mechanisms>"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="glob on model names (default: all)")
    p.add_argument("--attention", dest="attention_kind", metavar="KIND", nargs="?", const=_MECHANISMS,
                   help="only models of this attention kind: global, windowed, linear, conv-hybrid, cnn; "
                        "without KIND: the attention mechanisms a zoo ViT can be built with")
    p.add_argument("--target", help="only models with no known issue on this target")
    p.add_argument("--targets", action="store_true", help="show the per-target support table")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json, print_table
    from edgevit.models import get_spec, list_models

    if args.attention_kind == _MECHANISMS:
        return _list_mechanisms(args)
    names = list_models(args.pattern, attention=args.attention_kind, target=args.target)
    specs = [get_spec(n) for n in names]
    if args.targets:
        from edgevit.measure.support import support_table

        table = support_table(names)
        if args.json:
            emit_json(table)
        else:
            targets = table["targets"]
            rows = [[r["model"], *[r["targets"][t]["status"] for t in targets]] for r in table["rows"]]
            print_table(rows, ["model", *targets])
            print("\n" + table["legend"])
        return 0
    if args.json:
        emit_json([s.to_dict() for s in specs])
        return 0
    rows = [
        [s.name, s.family, s.attention, f"{s.params_m:.2f}", f"{s.gmacs:.3f}", f"{s.input_size[0]}x{s.input_size[1]}",
         _weights_source(s)]
        for s in specs
    ]
    print_table(rows, ["name", "family", "attention", "params (M)", "GMACs", "input", "trained weights"])
    print("\ntrained weights: shipped = in edgevit, works offline; hub = from the Hugging Face hub on first use\n"
          "(needs the network once, then cached); none = export needs --weights FILE or --random-init")
    return 0


def _weights_source(spec) -> str:
    if spec.embedded_weights:
        return "shipped"
    if spec.hub_id or spec.default_weights:
        return "hub" if spec.hub_id else "shipped"
    return "none"


def _list_mechanisms(args: argparse.Namespace) -> int:
    """The attention zoo: every mechanism, its family, claimed complexity and catalog entries."""
    from edgevit.cli import emit_json, print_table
    from edgevit.models import list_models
    from edgevit.models.attention import describe_mechanisms

    rows = describe_mechanisms()
    for r in rows:
        r["models"] = [m for m in list_models("vit_*")
                       if (rest := m.split("_", 2)[-1]) == r["name"] or rest.startswith(f"{r['name']}_")]
    if args.json:
        emit_json(rows)
        return 0
    print_table([[r["name"], r["family"], r["complexity"], "yes" if r["static_indices"] else "no (data-dependent)",
                  ", ".join(r["models"][:3])] for r in rows],
                ["mechanism", "family", "claimed cost", "static indices", "catalog entries"])
    print("\nBuild any of them into a plain ViT: edgevit.models.vit.EdgeViT(attention=NAME, attn_kwargs={...})")
    return 0
