"""The shape of `worker/`: layers without circles, small modules, one writer per object's state.

Read from the source with `ast`, so a change that breaks the shape fails here
before a reviewer has to notice it. Every import counts: module level, inside
functions (lazy imports) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "worker"

#: Lower layers never import higher ones. The longest matching prefix decides.
LAYERS: dict[str, int] = {
    # foundations: no imports of the worker beyond this layer
    "worker.records": 0,
    "worker.errors": 0,
    "worker.encoding": 0,
    "worker.backoff": 0,
    "worker.config_base": 0,
    "worker.lambda_compat.patterns": 0,  # pure: the config validates patterns with it
    "worker.outputs.outbox": 0,  # what `batch.send` queues
    "worker.outputs.ledger": 0,
    "worker.outputs.config": 1,
    # each source's own settings, then the schema that unites them
    "worker.sources.kafka.config": 1,
    "worker.sources.kafka.tls_context": 1,  # config loads the PEM files to check them
    "worker.sources.kafka.oauth": 1,  # config checks that the token provider loads
    "worker.sources.kinesis.config": 1,
    "worker.sources.dynamodb.config": 1,
    "worker.config": 2,
    "worker.config_load": 2,
    "worker.observe": 3,
    "worker.sources": 4,
    "worker.destinations": 4,
    "worker.outputs": 4,  # the producers of outputs
    "worker.partition": 5,
    "worker.handling": 6,
    "worker.lambda_compat": 7,
    "worker.runtime": 8,
    "worker.testing": 9,
    "worker.cli": 9,
    "worker.__main__": 10,
    "worker": 10,
}

MAX_MODULE_LINES = 400
MAX_WORKER_CLASS_LINES = 150

#: Attribute writes on objects other than `self` that are not another part's state.
FOREIGN_WRITES_ALLOWED = {
    # stdlib logging objects configured once at start-up
    ("worker/observe/logs.py", "formatter.converter"),
    ("worker/observe/logs.py", "root.handlers[:]"),
    # aiokafka's fetcher has no setter for its fetch limits (pinned, test_fetch_limits.py)
    ("worker/sources/kafka/fetch_limits.py", "fetcher._max_partition_fetch_bytes"),
    ("worker/sources/kafka/fetch_limits.py", "fetcher._fetch_max_bytes"),
    ("worker/sources/kafka/fetch_limits.py", "fetcher._prefetch_backoff"),
    # stdlib SSL contexts configured where they are made, before any use
    ("worker/sources/kafka/tls_context.py", "context.check_hostname"),
    ("worker/sources/kafka/tls_reasons.py", "context.check_hostname"),
    ("worker/sources/kafka/tls_reasons.py", "context.verify_mode"),
}
#: Modules still to be brought under the rule, with the reason.
FOREIGN_WRITES_PENDING: set[str] = set()


def modules(root: Path = ROOT) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The worker modules a file imports, resolved to the deepest known module."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("worker"):
                out.add(name)
    return out


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    return {name: imports(path, known) - {name} for name, path in mods.items()}


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def test_the_import_graph_is_read_from_every_module():
    g = graph()
    assert {"worker.runtime.worker", "worker.partition.partition", "worker.config"} <= set(g)
    assert "worker.partition.partition" in g["worker.runtime.build"]


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in graph().items()
        for d in deps
        if layer(d) > layer(m) and not m.startswith(d + ".")  # a package's own __init__
    ]
    assert upward == []


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                found.append([*path[path.index(d) :], d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_circle_check_finds_a_circle(tmp_path):
    """The check above can fail: a two-module circle in a scratch package is reported,
    the lazy import inside a function included."""
    pkg = tmp_path / "worker"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from worker import b\n")
    (pkg / "b.py").write_text("def f():\n    import worker.a\n")
    assert circles(graph(pkg)) == [["worker.a", "worker.b", "worker.a"]]


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(ROOT.parent)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_worker_class_is_under_150_lines():
    tree = ast.parse((ROOT / "runtime" / "worker.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Worker"]
    assert cls.end_lineno - cls.lineno + 1 < MAX_WORKER_CLASS_LINES


def foreign_writes(path: Path) -> list[str]:
    """`x.attr = ...` where x is not self or cls: one object writing another's state."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            base = target.value if isinstance(target, ast.Subscript) else target
            if isinstance(base, ast.Attribute):
                owner = base.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    found.append(ast.unparse(target))
    return found


def test_no_object_writes_the_fields_of_another():
    """The committer, the backpressure controller and the windows call methods on a
    partition; nothing assigns its fields (or any other part's) from outside."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = str(path.relative_to(ROOT.parent))
        if rel in FOREIGN_WRITES_PENDING:
            continue
        offenders += [
            f"{rel}: {w}" for w in foreign_writes(path) if (rel, w) not in FOREIGN_WRITES_ALLOWED
        ]
    assert offenders == []


def test_the_field_check_sees_a_foreign_write(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f(lane):\n    lane.committed = 3\n    self.ok = 1\n")
    assert foreign_writes(path) == ["lane.committed"]
