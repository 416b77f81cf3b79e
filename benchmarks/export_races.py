"""Concurrent exports to one path: are other people's files kept, and is the artifact whole?

Each trial starts 2-3 real exports (separate processes, ONNX target, ``vit_fmnist_tiny``) into
one fresh folder at the same moment, in one of five scenarios:

* ``race``           no ``--force``, nothing there: exactly one export may publish;
* ``force-race``     ``--force`` over an existing artifact: it is replaced by a whole one;
* ``user-new``       no ``--force``; a user's file is created at the output path mid-run;
* ``force-user-new`` ``--force``, nothing there at the start; a user's file appears mid-run;
* ``force-user-swap`` ``--force`` over an existing artifact; the user swaps in their own file mid-run.

The user's file and two bystander files in the folder must come out intact (the artifact that
was there when a ``--force`` export started may be replaced: that is what ``--force`` asked).
The output path must end holding either the user's file or an artifact that
``edgevit.runtimes.load`` opens, with no temporary files left, and the exports' own reports must
agree with that (no two successes, no success whose artifact is not there).

    python benchmarks/export_races.py                 # 60 trials, about 8 minutes on 2 busy cores
    python benchmarks/export_races.py --trials 100 --real --verify

To keep it cheap, after one real export per worker the conversion step copies that real
artifact after ``--convert-seconds`` (+-50%, so the exports finish in varying order); everything
else in ``export()`` runs as usual, including the publish step under test. ``--real`` converts
for real in every trial. Verification is off unless ``--verify``: every artifact is loaded here.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

MODEL, TARGET, NAME = "vit_fmnist_tiny", "onnx", "vit_fmnist_tiny_onnx_fp32.onnx"
SCENARIOS = ("race", "force-race", "user-new", "force-user-new", "force-user-swap")
USER_BYTES = b"the user's own file, not an artifact\n" * 20


def _fake_conversion(template: str, seconds: float) -> None:
    """Make this worker's ONNX conversion a copy of ``template`` (a real artifact) after
    ``seconds`` (+-50%): the file handling under test stays real, the hour of CPU goes."""
    from edgevit.converters.base import ConvertOutput, get_converter

    cls = type(get_converter(TARGET))
    if getattr(cls.convert, "_races_fake", None) == (template, seconds):
        return

    def convert(self, model, example, path, metadata, config):
        time.sleep(seconds * random.uniform(0.5, 1.5))
        shutil.copyfile(template, path)
        return ConvertOutput()

    convert._races_fake = (template, seconds)
    cls.convert = convert


def _export(out: str, force: bool, verify: bool, start_at: float, fake: tuple[str, float] | None = None) -> dict:
    """One export in a worker process, started at ``start_at`` (time.time())."""
    from edgevit.converters import export
    from edgevit.errors import EdgeVitError

    if fake is not None:
        _fake_conversion(*fake)
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.time()
    try:
        export(MODEL, TARGET, out=out, force=force, pretrained=True, verify=verify)
        return {"ok": True, "seconds": time.time() - t0}
    except EdgeVitError as exc:
        return {"ok": False, "error": type(exc).__name__, "message": str(exc)[:300], "seconds": time.time() - t0}


def _user_file(final: Path, swap: bool, delay: float) -> bool:
    """A user's file lands at ``final`` after ``delay``: created exclusively, or swapped in with
    a rename (over the artifact that is there). Returns whether it landed."""
    time.sleep(delay)
    if swap:
        mine = final.with_name("users-file.part")
        mine.write_bytes(USER_BYTES)
        os.replace(mine, final)
        return True
    try:
        fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False  # an export was first: the user would not write there
    with os.fdopen(fd, "wb") as f:
        f.write(USER_BYTES)
    return True


def _loadable(path: Path) -> bool:
    from edgevit.runtimes import load

    try:
        runtime = load(path)
        close = getattr(runtime, "close", None)
        if close:
            close()
        return True
    except Exception:  # noqa: BLE001 - any failure means not a valid artifact
        return False


def _trial(pool, template: Path, folder: Path, scenario: str, workers: int, verify: bool, typical: float,
           rng: random.Random, fake: tuple[str, float] | None) -> dict:
    folder.mkdir(parents=True)
    final = folder / NAME
    (folder / "notes.txt").write_text("bystander: must survive\n")
    (folder / "other_model.onnx").write_bytes(b"bystander artifact bytes")
    force = scenario.startswith("force")
    if scenario in ("force-race", "force-user-swap"):
        shutil.copyfile(template, final)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != NAME}

    start_at = time.time() + 0.5
    jobs = [pool.apply_async(_export, (str(folder), force, verify, start_at, fake)) for _ in range(workers)]
    landed = False
    if "user" in scenario:
        delay = 0.5 + rng.uniform(0.0, 1.2 * typical)
        landed = _user_file(final, swap=scenario == "force-user-swap", delay=delay)
    reports = [j.get(timeout=600) for j in jobs]

    problems = []
    kept = all((folder / name).is_file() and (folder / name).read_bytes() == data for name, data in before.items())
    if not kept:
        problems.append("a bystander file was changed or removed")
    user_intact = True
    if landed:
        user_intact = final.is_file() and final.read_bytes() == USER_BYTES
        if not user_intact:
            problems.append("the user's file was replaced")
    leftovers = sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)
    if leftovers:
        problems.append(f"left behind: {leftovers}")
    successes = sum(r["ok"] for r in reports)
    holds_user = final.is_file() and final.read_bytes() == USER_BYTES
    valid = (not holds_user) and final.exists() and _loadable(final)
    outcome_ok = (valid and successes >= 1) or (holds_user and landed)
    if not outcome_ok:
        problems.append(f"output path holds neither a loadable artifact nor the user's file "
                        f"(successes {successes}, user file landed {landed})")
    if successes > 1 and scenario in ("race", "user-new"):
        problems.append(f"{successes} exports without --force reported success for one path")
    if holds_user and successes and scenario != "force-user-swap":
        problems.append("an export reported success but the user's file is there")
    return {
        "scenario": scenario,
        "workers": workers,
        "force": force,
        "user_file_landed": landed,
        "successes": successes,
        "errors": sorted(r.get("error", "") for r in reports if not r["ok"]),
        "kept_files_intact": kept and user_intact,
        "valid_outcome": outcome_ok and not leftovers,
        "loadable_artifact": valid,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--workers", type=int, default=3, help="processes in the pool (each trial uses 2 or 3)")
    ap.add_argument("--verify", action="store_true", help="verify each export against the float model")
    ap.add_argument("--real", action="store_true",
                    help="run the real ONNX conversion in every trial (default: a real one to warm up, then the "
                         "conversion step copies that artifact after --convert-seconds)")
    ap.add_argument("--convert-seconds", type=float, default=2.0, help="duration of the fast conversion step")
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--json", metavar="FILE", help="also write every trial as JSON")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2-3 exports share the cores

    root = Path(tempfile.mkdtemp(prefix="edgevit-races-"))
    ctx = mp.get_context("spawn")
    try:
        with ctx.Pool(args.workers) as pool:
            # Warm every worker (imports, weights) and make the artifact that force trials replace.
            warm = [pool.apply_async(_export, (str(root / f"warm{i}"), False, args.verify, time.time() + 1.0))
                    for i in range(args.workers)]
            seconds = [w.get(timeout=900)["seconds"] for w in warm]
            template = root / "warm0" / NAME
            again = pool.apply_async(_export, (str(root / "warm0"), True, args.verify, time.time()))
            typical = again.get(timeout=900)["seconds"]
            print(f"warm: first exports {', '.join(f'{s:.1f}' for s in seconds)} s, a warm one {typical:.1f} s",
                  file=sys.stderr)
            fake = None
            if not args.real:
                kept = root / "template.onnx"
                shutil.copyfile(template, kept)
                template, fake = kept, (str(kept), args.convert_seconds)
                probe = pool.apply_async(_export, (str(root / "probe"), False, args.verify, time.time(), fake))
                typical = probe.get(timeout=900)["seconds"]
                print(f"fast conversion: an export takes {typical:.1f} s", file=sys.stderr)
            trials = []
            for i in range(args.trials):
                scenario = SCENARIOS[i % len(SCENARIOS)]
                workers = rng.choice([2, 3]) if args.workers >= 3 else 2
                t = _trial(pool, template, root / f"t{i:03d}", scenario, workers, args.verify, typical, rng, fake)
                trials.append(t)
                flag = "ok" if t["kept_files_intact"] and t["valid_outcome"] else "PROBLEM " + "; ".join(t["problems"])
                print(f"[{i + 1:3d}/{args.trials}] {scenario:16s} x{workers} successes={t['successes']} "
                      f"user={'landed' if t['user_file_landed'] else '-':6s} {flag}", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    n = len(trials)
    intact = sum(t["kept_files_intact"] for t in trials)
    valid = sum(t["valid_outcome"] for t in trials)
    both = sum(t["kept_files_intact"] and t["valid_outcome"] for t in trials)
    summary = {
        "trials": n,
        "kept_every_pre_existing_file_intact": intact,
        "left_a_valid_artifact_or_the_users_file": valid,
        "both": both,
        "ended_with_loadable_artifact": sum(t["loadable_artifact"] for t in trials),
        "ended_with_users_file": sum(t["user_file_landed"] and not t["loadable_artifact"] for t in trials),
        "with_force": sum(t["force"] for t in trials),
        "user_file_landed_mid_run": sum(t["user_file_landed"] for t in trials),
        "per_scenario": {s: dict(Counter(("ok" if t["kept_files_intact"] and t["valid_outcome"] else "problem")
                                         for t in trials if t["scenario"] == s)) for s in SCENARIOS},
        "errors_reported": dict(Counter(e for t in trials for e in t["errors"])),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "trials": trials}, indent=2))
    return 0 if both == n else 1


if __name__ == "__main__":
    sys.exit(main())
