"""``edgevit profile``: parameters, MACs and activation memory by component as resolution grows."""

from __future__ import annotations

import argparse

COMMAND = "profile"
HELP = "parameters, MACs and activation memory by component (patch-embed, attention, MLP, ...) vs resolution"
DESCRIPTION = (
    "Count parameters, multiply-accumulates and peak activation memory of catalog models, split by\n"
    "component (patch-embed/stem, attention QK^T and AV products, attention projections, MLP, norm,\n"
    "other convs, head), at each input resolution. Counting runs on torch's meta device (shapes only),\n"
    "so even large resolutions take about a second. Without MODEL it compares global (DeiT-Tiny),\n"
    "windowed (Swin-T), linear (EfficientViT-B0) attention and a CNN (MobileNetV3-Large)."
)
EXAMPLES = [
    "edgevit profile --resolutions 224 384 512 --plot profile.png",
    "edgevit profile deit_tiny_patch16_224 vit_tiny_window vit_tiny_performer --resolutions 224 448",
    "edgevit profile --catalog          # every catalog model at its default size vs its catalog figures",
]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="model sources: catalog names, timm:NAME, hf:ORG/NAME or save_pretrained folders (default: deit_tiny, swin_tiny, efficientvit_b0, mobilenetv3_large)")
    p.add_argument("--resolutions", "-r", nargs="+", type=int, metavar="PX",
                   help="square input sizes to profile (default: each model's own)")
    p.add_argument("--plot", metavar="PNG", help="write a PNG comparing the models as resolution grows")
    p.add_argument("--components", action="store_true",
                   help="also print activation memory at the peak by component (MB)")
    p.add_argument("--catalog", action="store_true",
                   help="profile every catalog model at its default resolution and compare with its catalog figures")
    p.add_argument("--window", choices=["pad", "fit"], default="pad",
                   help="Swin at sizes whose grid is not a multiple of the window: pad the grid (timm, default) "
                   "or fit the window to a divisor of every stage grid")
    p.add_argument("--device", choices=["meta", "cpu"], default="meta",
                   help="meta: count shapes without computing (default); cpu: run the real forward")
    p.add_argument("--db", metavar="FILE", help="results database (default: ~/.cache/edgevit/results.sqlite)")
    p.add_argument("--no-record", action="store_true", help="do not store the results in the database")


def run(args: argparse.Namespace) -> int:
    from edgevit.cli import emit_json, json_stdout_guard, print_table
    from edgevit.cli._common import progress_enabled
    from edgevit.errors import ConfigError
    from edgevit.measure.profile import (
        COMPONENT_LABELS,
        COMPONENTS,
        DEFAULT_PROFILE_MODELS,
        format_profile_table,
        plot_profiles,
        profile_model,
    )

    if args.catalog and (args.models or args.resolutions):
        raise ConfigError("--catalog profiles every model at its default size; drop MODEL and --resolutions")
    if args.resolutions and any(r < 8 for r in args.resolutions):
        raise ConfigError("--resolutions must be at least 8 pixels")
    from edgevit.models import get_spec, list_models

    names = list_models() if args.catalog else (args.models or list(DEFAULT_PROFILE_MODELS))
    for name in names:
        get_spec(name)  # unknown names fail before any work
    jobs = [(n, r) for n in names for r in (args.resolutions or [None])]
    bar = None
    if progress_enabled(args):
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="profile", unit="model", leave=False)
        except ImportError:
            bar = None
    results = []
    with json_stdout_guard(args.json):
        for name, res in jobs:
            if bar is not None:
                bar.set_postfix_str(f"{name}@{res or 'default'}")
            results.append(profile_model(name, res, device=args.device, window_policy=args.window))
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        if args.plot:
            plot_profiles(results, args.plot)
    if not args.no_record:
        from edgevit.measure.results import record_profile

        record_profile(results, db=args.db)
    if args.json:
        payload = {"results": [r.to_dict() for r in results]}
        if args.plot:
            payload["plot"] = args.plot
        if args.catalog:
            payload["catalog"] = _catalog_rows(results, get_spec)
        emit_json(payload)
        return 0
    headers, rows = format_profile_table(results)
    summary_cols = 7
    print_table([r[:summary_cols] for r in rows], headers[:summary_cols])
    print()
    print("GMACs by component:")
    print_table([r[:3] + r[summary_cols:] for r in rows], headers[:3] + headers[summary_cols:])
    if args.components:
        print()
        print("activation MB alive at the peak, by the component that produced it (stem includes the input):")
        mem_rows = [
            [r.model, str(r.resolution[0])] + [f"{r.components[c].peak_bytes / 1e6:.2f}" for c in COMPONENTS]
            for r in results
        ]
        print_table(mem_rows, ["model", "res"] + [COMPONENT_LABELS[c] for c in COMPONENTS])
    notes = sorted({f"{r.model}@{r.resolution[0]}: {r.notes['window']}" for r in results if "window" in r.notes})
    for n in notes:
        print(f"note: window {n}")
    if args.catalog:
        print()
        print("catalog figures (measured vs ModelSpec.params_m / gmacs):")
        crow = _catalog_rows(results, get_spec)
        print_table(
            [[c["model"], c["params_m"], c["spec_params_m"], c["gmacs"], c["spec_gmacs"], c["status"]] for c in crow],
            ["model", "params M", "spec params M", "GMACs", "spec GMACs", "status"],
        )
    print()
    print("MACs: multiply-accumulates of matmuls and convolutions (FlopCounterMode convention, FLOPs = 2 x MACs);"
          " memory: fp32 activations of an eager no-grad forward at batch 1.")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0


def _catalog_rows(results, get_spec) -> list[dict]:
    rows = []
    for r in results:
        spec = get_spec(r.model)
        p, g = round(r.params_m, 3), float(f"{r.gmacs:.4g}")
        if not spec.params_m and not spec.gmacs:
            status = "spec empty"
        elif abs(spec.params_m - r.params_m) <= 0.01 * r.params_m and abs(spec.gmacs - r.gmacs) <= 0.01 * r.gmacs:
            status = "ok"
        else:
            status = "differs > 1%"
        rows.append({"model": r.model, "params_m": p, "spec_params_m": spec.params_m, "gmacs": g,
                     "spec_gmacs": spec.gmacs, "status": status})
    return rows
