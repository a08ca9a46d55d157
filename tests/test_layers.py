"""The import map: no circles, and no module imports a layer above its own.

Every import counts, also the ones inside functions (skypty imports lazily
for start-up time, but a lazy import is still a dependency).  The layers,
top down, are the ones docs/architecture.md draws.
"""

import ast
import os

import skypty

ROOT = os.path.dirname(os.path.dirname(skypty.__file__))

# (layer, module prefixes), top down; a module belongs to the first that matches
LAYERS = [
    ("entry points", ["skypty.tap", "skypty.visorapp", "skypty.dmsg.tap", "skypty.client.main"]),
    ("client", ["skypty.client"]),
    ("host", ["skypty.host"]),
    ("fs", ["skypty.fs"]),
    ("visor transports", ["skypty.visor"]),
    ("dmsg", ["skypty.dmsg"]),
    ("web", ["skypty.web"]),
    ("wire", ["skypty.wire"]),
    ("foundation", ["skypty.config", "skypty.logs", "skypty.keys", "skypty.durations", "skypty.errors", "skypty"]),
]
ROOT_MODULES = {"skypty", "skypty.tap", "skypty.visorapp", "skypty.config", "skypty.logs", "skypty.keys",
                "skypty.durations", "skypty.errors"}


def modules():
    found = {}
    for dirpath, _dirs, files in os.walk(os.path.join(ROOT, "skypty")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module.removesuffix(".__init__")] = path
    return found


def import_map():
    mods = modules()

    def owner(name):  # skypty.wire.rpc.Method -> skypty.wire.rpc
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    edges = {}
    for module, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.startswith("skypty"))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("skypty"):
                deps.update(owner(f"{node.module}.{a.name}") for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import (skypty imports absolutely)")
        deps.discard(module)
        deps.discard("")
        edges[module] = deps
    return edges


def layer(module):
    for rank, (_name, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return len(LAYERS) - rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)")


def test_the_map_sees_real_imports():
    edges = import_map()
    assert "skypty.wire.gob" in edges["skypty.wire.rpc"]
    assert "skypty.client.hosts" in edges["skypty.client.reach"]  # a lazy, function-level import


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(f"{m} ({LAYERS[len(LAYERS) - layer(m)][0]}) imports {d} ({LAYERS[len(LAYERS) - layer(d)][0]})"
                    for m, deps in import_map().items() for d in deps if layer(d) > layer(m))
    assert upward == []


def test_no_circles():
    edges = import_map()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan: every strongly connected set of more than one module is a circle
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert circles == []


def test_no_loose_modules_at_the_package_root():
    """Protocol pieces live in their layer's package (wire/, dmsg/ ...), not beside tap.py."""
    loose = {m for m in modules() if m.count(".") <= 1 and m not in ROOT_MODULES
             and not os.path.isdir(os.path.join(ROOT, *m.split(".")))}
    assert loose == set()
