"""The house's shape: no import cycle in the package, and command lines that answer --help and
argument errors without importing torch or Ray."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("tune_dsr", "search_spaces")
CLIS = ("train", "search", "export", "evaluate", "compare", "synth", "finetune", "cycle")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, anywhere in its body (lazy imports too)."""
    modules = {_module_name(path): path for package in PACKAGES
               for path in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            edges |= {target for target in targets if target in modules and target != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return [*stack[stack.index(child):], child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert {"tune_dsr.training.trainer", "tune_dsr.tuning.service",
            "tune_dsr.tuning.experiment"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_library_module_imports_a_command_line():
    """The CLIs are thin shells over the library; the library never reaches back into one."""
    clis = {f"tune_dsr.{cli}" for cli in CLIS} | {"tune_dsr.cli"}
    graph = import_graph()
    assert clis <= set(graph)
    reaching = {module: sorted(graph[module] & clis) for module in graph
                if module not in clis and graph[module] & clis}
    assert reaching == {}


def test_every_module_declares_what_it_offers():
    """``__all__`` in every module of the package, naming only what exists (presets excepted:
    they follow the preset protocol, SPACE/METRIC/...)."""
    import importlib

    for name in sorted(import_graph()):
        if name.startswith("search_spaces.") or name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        assert isinstance(getattr(module, "__all__", None), list), f"{name} has no __all__"
        missing = [item for item in module.__all__ if not hasattr(module, item)]
        assert missing == [], f"{name}.__all__ names {missing}"


def test_the_front_door_names_what_exists():
    import tune_dsr

    for name in tune_dsr.__all__:
        assert getattr(tune_dsr, name) is not None, name
    with pytest.raises(AttributeError):
        tune_dsr.no_such_thing  # noqa: B018


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# `python -m tune_dsr.<cli> ARGS` in a fresh interpreter; prints whether torch or ray got imported.
PROBE = """
import runpy, sys
sys.argv = ["x", *sys.argv[1:]]
try:
    runpy.run_module("tune_dsr.{cli}", run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = sorted(m for m in ("torch", "ray", "timm", "torchvision") if m in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy) or "none", file=sys.stderr)
"""


def _probe(cli: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE.format(cli=cli), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return done.stderr


@pytest.mark.parametrize("cli", CLIS)
def test_help_answers_without_torch_or_ray(cli):
    err = _probe(cli, "--help")
    assert "EXIT 0 HEAVY none" in err, err


@pytest.mark.parametrize("cli, args, words", [
    ("train", ["--epochs", "many", "--out", "x"], "--epochs: invalid int value: 'many'"),
    ("search", ["--gpus", "lots"], "--gpus: invalid float value: 'lots'"),
    ("export", [], "the following arguments are required: experiment"),
    ("evaluate", ["--test-dir", "x"], "the following arguments are required: --dsr"),
    ("compare", ["--out", "x.png"], "the following arguments are required: --dsr"),
    ("synth", ["--subjects", "x", "--out", "y"], "--subjects: invalid int value: 'x'"),
    ("finetune", ["--epochs", "x", "--out", "y"], "--epochs: invalid int value: 'x'"),
    ("cycle", ["--config", "a.json", "--dsr", "b.pt", "--out", "y"],
     "argument --dsr: not allowed with argument --config"),
])
def test_argument_errors_answer_without_torch_or_ray(cli, args, words):
    """A usage error: exit 2, the message, and neither torch nor Ray imported."""
    err = _probe(cli, *args)
    assert "EXIT 2 HEAVY none" in err and words in err, err


def test_list_spaces_answers_without_torch_or_ray():
    """Not an error: the presets listed, exit 0, without torch or Ray."""
    err = _probe("search", "--list-spaces")
    assert "EXIT 0 HEAVY none" in err, err
