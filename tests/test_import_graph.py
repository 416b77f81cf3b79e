"""The package's import graph, read from the source with ``ast`` (nothing is imported):

* no import circles, counting every import (module level and inside functions);
* no module imports another module's private name (``from x import _y``); a package's own private
  submodules (``from edgevit.converters import _output`` inside ``edgevit.converters``) are
  shared by its modules and are not private to one of them;
* the device-safe modules (what a Raspberry Pi imports) import nothing from the host side.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# pyproject.toml's package-dir: import name -> folder.
PACKAGE_DIRS = {"edgevit": "edgevit", "edgevit.models": "models", "edgevit.converters": "converters",
                "edgevit.runtimes": "runtimes"}

DEVICE_SAFE = ("edgevit", "edgevit.errors", "edgevit.metadata", "edgevit.preprocess", "edgevit._text",
               "edgevit._quiet", "edgevit._version", "edgevit._torchvision_compat", "edgevit.runtimes")
HOST_PACKAGES = {"torch", "torchvision", "timm", "torchao", "litert_torch", "transformers", "onnxscript", "safetensors",
                 "ray"}  # ray: only in the cluster extra (edgevit.measure.sweep imports it when asked to)
HOST_MODULES = ("edgevit.converters", "edgevit.models", "edgevit.compress", "edgevit.measure", "edgevit.data",
                "edgevit.cli")
# (module, imported package): why it is allowed.
DEVICE_EXCEPTIONS = {
    ("edgevit.runtimes.executorch", "torch"): "ExecuTorch's Python bindings need torch loaded; the executorch "
                                               "extra installs it (a TFLite or ONNX device never imports this module)",
    ("edgevit._torchvision_compat", "torch"): "imported inside the hook that runs only when torchvision itself is "
                                              "being imported, so torch is installed and about to load anyway",
}
# Circles known and not yet removed: frozenset of modules -> why. Empty is the goal; an entry that no
# longer matches a circle fails the test, so the list cannot go stale.
KNOWN_CIRCLES: dict[frozenset[str], str] = {}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        base = REPO / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if folder == "edgevit" and parts[0] in ("models", "converters", "runtimes"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = path
    return mods


MODULES = _modules()


def _where(module: str, line: int) -> str:
    path = MODULES[module]
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}"


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import statement in ``module``."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            out += [(source, alias.name, node.lineno) for alias in node.names]
    return out


def _target(source: str, name: str | None) -> str | None:
    """The edgevit module an import loads: ``from pkg import submodule`` -> the submodule."""
    if name and f"{source}.{name}" in MODULES:
        return f"{source}.{name}"
    while source and source not in MODULES:
        source = source.rpartition(".")[0]
    return source or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for source, name, _ in _imports(module):
            if source.split(".")[0] == "edgevit":
                target = _target(source, name)
                if target and target != module:
                    graph[module].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_whole_package():
    assert {"edgevit.compress.loop", "edgevit.measure.bench", "edgevit.data.samples", "edgevit.runtimes.tflite",
            "edgevit.converters.export", "edgevit.models.sources", "edgevit.cli.demo"} <= set(MODULES)
    assert "edgevit.compress.loop" in _graph()["edgevit.compress.training"]


def test_no_import_circles():
    circles = _circles(_graph())
    new = [sorted(c) for c in circles if c not in KNOWN_CIRCLES]
    assert not new, f"import circles: {new}"
    stale = [sorted(c) for c in KNOWN_CIRCLES if c not in circles]
    assert not stale, f"these circles are gone: remove them from KNOWN_CIRCLES: {stale}"


def test_the_circle_finder_finds_circles():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert _circles({"a": {"b"}, "b": set()}) == []


def _own_private_submodule(module: str, source: str, name: str) -> bool:
    """``from <package> import _sub`` or ``from <package>._sub import x`` where the package holds the importer."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    return f"{source}.{name}" in MODULES and (package == source or package.startswith(source + "."))


def test_no_private_names_imported_from_other_modules():
    offences = []
    for module in MODULES:
        for source, name, line in _imports(module):
            if source.split(".")[0] != "edgevit" or not name or not name.startswith("_") or name.startswith("__"):
                continue
            if source == module or _own_private_submodule(module, source, name):
                continue
            offences.append(f"{_where(module, line)}: from {source} import {name}")
    assert not offences, "private names imported across modules:\n" + "\n".join(offences)


def _device_safe(module: str) -> bool:
    return module in DEVICE_SAFE or module.startswith("edgevit.runtimes.")


def test_device_safe_modules_import_nothing_from_the_host_side():
    offences = []
    device = [m for m in MODULES if _device_safe(m)]
    assert "edgevit.runtimes.tflite" in device and "edgevit.preprocess" in device
    for module in device:
        for source, name, line in _imports(module):
            top = source.split(".")[0]
            where = _where(module, line)
            if top in HOST_PACKAGES and (module, top) not in DEVICE_EXCEPTIONS:
                offences.append(f"{where}: imports {source}")
            if top == "edgevit":
                target = _target(source, name)
                if target is not None and not _device_safe(target):
                    offences.append(f"{where}: imports {target}")
                if any(target == h or (target or "").startswith(h + ".") for h in HOST_MODULES):
                    offences.append(f"{where}: imports host-side {target}")
    assert not offences, "device-safe modules importing the host side:\n" + "\n".join(sorted(set(offences)))


@pytest.mark.parametrize("rule", ["circles", "private"])
def test_the_rules_catch_what_they_are_for(tmp_path, monkeypatch, rule):
    """The checks fail on the shapes they forbid (the layout before issue 19 had both)."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    if rule == "circles":
        a.write_text("def f():\n    from edgevit.b import g\n")
        b.write_text("from edgevit.a import f\n")
    else:
        a.write_text("def _helper():\n    pass\n")
        b.write_text("from edgevit.a import _helper\n")
    monkeypatch.setitem(MODULES, "edgevit.a", a)
    monkeypatch.setitem(MODULES, "edgevit.b", b)
    with pytest.raises(AssertionError):
        if rule == "circles":
            test_no_import_circles()
        else:
            test_no_private_names_imported_from_other_modules()
