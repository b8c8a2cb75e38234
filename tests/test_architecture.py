"""The shape of llmkit's imports: no cycles (imports inside functions count) and no private names crossing modules.

An import inside a function that would otherwise be a cycle is a sign that a type lives in the wrong module
(STYLE.md habit 13), so the graph below counts every import statement, wherever it sits; only imports under
`if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "llmkit"

# Private names allowed to cross modules (none). Each entry must still occur: the test fails on a stale entry,
# so this list can only shrink.
KNOWN_PRIVATE_CROSSINGS: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, str | None, str]]:
    """(imported llmkit module, name taken from it or None, local alias) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_nodes(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[str, str | None, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    found.append((alias.name, None, alias.asname or alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base not in known:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:  # `from llmkit import loading`: the submodule itself
                    found.append((sub, None, alias.asname or alias.name))
                else:
                    found.append((base, alias.name, alias.asname or alias.name))
    return found


def import_graph() -> dict[str, set[str]]:
    """llmkit module -> the llmkit modules it imports (anywhere in the file)."""
    modules = _modules()
    known = set(modules)
    return {
        name: {target for target, _, _ in _imports(name, path, known) if target != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def private_crossings() -> set[tuple[str, str, str]]:
    """(importer, llmkit module, private name) for each `_name` one llmkit module takes from another."""
    modules = _modules()
    known = set(modules)
    crossings: set[tuple[str, str, str]] = set()
    for name, path in modules.items():
        imports = _imports(name, path, known)
        bound = {alias: target for target, taken, alias in imports if taken is None}
        for target, taken, _ in imports:
            if taken is not None and taken.startswith("_") and not taken.startswith("__") and target != name:
                crossings.add((name, target, taken))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and bound[node.value.id] != name
            ):
                crossings.add((name, bound[node.value.id], node.attr))
    return crossings


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None


def test_the_graph_counts_imports_inside_functions():
    graph = import_graph()
    # both are imported only inside functions: a graph of top-level imports would miss them
    assert "llmkit.engines.llama_cpp" in graph["llmkit.generate"]
    assert "llmkit.int8_format" in graph["llmkit.loading"]


def test_llmkit_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle inside llmkit: " + " -> ".join(cycle or [])


def test_the_engines_share_a_torch_free_module_and_not_each_other():
    graph = import_graph()
    assert "llmkit.generate" not in graph["llmkit.engines.llama_cpp"]
    assert {"llmkit.sampling"} <= graph["llmkit.generate"] & graph["llmkit.engines.llama_cpp"]
    assert graph["llmkit.sampling"] <= {"llmkit.errors"}
    assert "llmkit.quantize" not in graph["llmkit.loading"]


# The task modules and the CLI above them (STYLE.md "The shape"). Engines sit below every task: an engine that
# reaches up into one (as the Llama loop once took classify.pad_batch) cannot serve another task without dragging
# the first along, and the import graph grows cycles.
TASK_MODULES = ("llmkit.generate", "llmkit.classify", "llmkit.fill_mask", "llmkit.embed", "llmkit.finetune",
                "llmkit.distill", "llmkit.quantize", "llmkit.zeroshot", "llmkit.openai_batch", "llmkit.cli")


def tasks_reached_by_engines(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """engine module -> the task modules it imports, directly or through other llmkit modules (none expected)."""
    found: dict[str, set[str]] = {}
    for engine in sorted(m for m in graph if m == "llmkit.engines" or m.startswith("llmkit.engines.")):
        seen: set[str] = set()
        todo = [engine]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        tasks = {m for m in seen if m in TASK_MODULES or m.startswith("llmkit.cli.")}
        if tasks:
            found[engine] = tasks
    return found


def test_the_engine_check_finds_a_task_reached_through_a_shared_module():
    planted = {"llmkit.engines.x": {"llmkit.tokens"}, "llmkit.tokens": {"llmkit.classify"}, "llmkit.classify": set(),
               "llmkit.engines.y": {"llmkit.cli.generate"}, "llmkit.engines.z": {"llmkit.sampling"},
               "llmkit.generate": {"llmkit.engines.z"}}
    assert tasks_reached_by_engines(planted) == {"llmkit.engines.x": {"llmkit.classify"},
                                                 "llmkit.engines.y": {"llmkit.cli.generate"}}


def test_no_engine_imports_a_task_module():
    graph = import_graph()
    assert {"llmkit.engines.choose", "llmkit.engines.llama_cpp", "llmkit.engines.llama_loop",
            "llmkit.engines.transformers"} <= set(graph)
    assert tasks_reached_by_engines(graph) == {}


def test_no_private_name_crosses_modules():
    crossings = private_crossings()
    new = sorted(crossings - KNOWN_PRIVATE_CROSSINGS)
    assert not new, "private names used from another module (make them public): " + "; ".join(
        f"{who} uses {where}.{what}" for who, where, what in new
    )
    stale = sorted(KNOWN_PRIVATE_CROSSINGS - crossings)
    assert not stale, f"fixed, remove from KNOWN_PRIVATE_CROSSINGS: {stale}"


def test_the_shared_module_and_the_engines_import_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, llmkit.sampling, llmkit.engines.llama_cpp, llmkit.int8_format, llmkit.engines.choose, "
        "llmkit.engines.transformers, llmkit.engines.llama_loop; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
