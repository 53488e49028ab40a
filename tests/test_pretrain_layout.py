"""The pre-training package's import graph has no cycle, lazy (function-level) imports included, and the
plugin library never imports it (docs/architecture.md: nnunet_mosmos never imports pretrain)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """module -> the modules of ``pretrain`` it imports anywhere in its body (function-level too)."""
    modules = {_module_name(p): p for p in (REPO / package).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in modules and c != name}
        # a package's __init__ is imported along with any of its submodules: count that edge as well
        graph[name] = targets | {t.rsplit(".", 1)[0] for t in targets if t.rsplit(".", 1)[0] in modules} - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_pretrain_imports_have_no_cycle():
    graph = import_graph("pretrain")
    assert "pretrain.pairs" in graph and "pretrain.sources.manifest" in graph
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
    # the core types stand on nothing else of pretrain; sources never reach the data sets or the engine
    assert graph["pretrain.pairs"] == set()
    for source in [m for m in graph if m.startswith("pretrain.sources")]:
        assert not graph[source] & {"pretrain.datasets", "pretrain.engine", "pretrain.volumes"}, source


def test_plugin_library_never_imports_pretrain():
    for path in (REPO / "nnunet_mosmos").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n == "pretrain" or n.startswith("pretrain.") for n in names), path
