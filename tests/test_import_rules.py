"""Imports run one way: the table in docs/ARCHITECTURE.md ("The parts and who may import whom"),
checked on every shipped .py file. Top-level and function-local `import` / `from ... import`, and
`importlib.import_module("...")` / `__import__("...")` / `"module:function"` strings with a literal
module name, all count. A failure lists every offending file:line."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = (
    "engine", "kvtransfer", "prefix_index", "rpc", "worker", "prefill_worker", "decode_worker",
    "router", "baton", "baton_pb", "bench", "tests",
)  # fmt: skip
# package -> the modules of ours (dotted prefixes) it may import besides itself
ALLOWED: dict[str, tuple[str, ...]] = {
    "engine": (),
    "kvtransfer": (),
    "prefix_index": ("engine.cache.hashing",),
    "rpc": ("engine", "baton_pb"),
    "worker": ("engine", "kvtransfer", "prefix_index", "rpc", "baton_pb"),
    "prefill_worker": ("worker", "rpc", "baton_pb"),
    "decode_worker": ("worker", "rpc", "baton_pb"),
    "router": ("rpc", "prefix_index", "engine", "baton_pb"),
    "baton": tuple(p for p in OURS if p not in ("bench", "tests")),  # the CLI is the top
}
DYNAMIC_IMPORTERS = {"import_module", "__import__"}
MODULE_COLON_NAME = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    package: str
    target: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.package} -> {self.target}"


def _is_under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, dotted name) of everything the source imports or names as a module to import."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from a.b import c` may import the module a.b.c: check the longest name.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _called_name(node.func) in DYNAMIC_IMPORTERS:
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = MODULE_COLON_NAME.match(node.value)
            if match:
                found.append((node.lineno, match.group(1)))
    return found


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def check_source(package: str, source: str, path: str) -> list[Violation]:
    """Every import in `source` (a file of `package`) that the table does not allow."""
    allowed = (package, *ALLOWED[package])
    violations = []
    for line, module in _imported_modules(ast.parse(source, filename=path)):
        if module.split(".")[0] not in OURS:
            continue  # stdlib or third party
        if not any(_is_under(module, prefix) for prefix in allowed):
            violations.append(Violation(path, line, package, module))
    return violations


def shipped_files(package: str) -> list[Path]:
    return sorted(p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts)


def test_every_shipped_import_follows_the_table():
    violations = []
    for package in ALLOWED:
        files = shipped_files(package)
        assert files, f"package {package} has no .py files: is the table out of date?"
        for path in files:
            violations += check_source(package, path.read_text(), str(path.relative_to(REPO)))
    assert not violations, "imports the table in docs/ARCHITECTURE.md forbids:\n" + "\n".join(map(str, violations))


def test_the_checker_reports_forbidden_imports():
    source = """
import router.core
from worker.core import WorkerCore
from engine.cache import hashing
from engine.model_config import ModelConfig
import importlib
def late():
    from decode_worker import start
    importlib.import_module("worker.launch")
    __import__("prefill_worker")
STARTER = "worker.launch:start_worker"
"""
    reported = {(v.line, v.target) for v in check_source("prefix_index", source, "synthetic.py")}
    assert reported == {
        (2, "router.core"),
        (3, "worker.core.WorkerCore"),
        (5, "engine.model_config.ModelConfig"),
        (8, "decode_worker.start"),
        (9, "worker.launch"),
        (10, "prefill_worker"),
        (11, "worker.launch"),
    }  # line 4 (engine.cache.hashing) is the one arrow prefix_index may take


def test_the_checker_knows_each_rule():
    def forbidden(package: str, module: str) -> bool:
        return bool(check_source(package, f"import {module}\n", "synthetic.py"))

    assert forbidden("engine", "baton_pb.v1.worker_pb2")
    assert forbidden("engine", "kvtransfer.base")
    assert forbidden("kvtransfer", "engine.cache.tensors")
    assert forbidden("rpc", "router.core") and forbidden("rpc", "worker.core")
    assert forbidden("router", "worker.config") and forbidden("router", "prefill_worker")
    assert forbidden("prefill_worker", "decode_worker") and forbidden("decode_worker", "prefill_worker")
    assert forbidden("worker", "router.core")
    assert not forbidden("worker", "prefix_index.base") and not forbidden("router", "rpc.tls")
    assert not forbidden("engine", "torch") and not forbidden("baton", "worker.launch")


# ---- function-local imports ------------------------------------------------------------------
# Shipped code imports at module top. A function-local import is allowed only for a cycle, an
# optional dependency, or the CLI's lazy start, and says which on its line.
LOCAL_IMPORT_PACKAGES = (
    "engine", "kvtransfer", "prefix_index", "rpc", "worker", "prefill_worker", "decode_worker",
    "router", "baton",
)  # fmt: skip
LOCAL_IMPORT_REASON = re.compile(r"#\s*(lazy|optional|cycle):")


def unmarked_local_imports(source: str, path: str) -> list[str]:
    """`path:line` of each import inside a function whose lines carry no `# lazy:` /
    `# optional:` / `# cycle:` comment."""
    lines = source.splitlines()
    found: set[int] = set()
    for function in ast.walk(ast.parse(source, filename=path)):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import | ast.ImportFrom):
                text = lines[node.lineno - 1 : node.end_lineno]
                if not any(LOCAL_IMPORT_REASON.search(line) for line in text):
                    found.add(node.lineno)
    return [f"{path}:{line}" for line in sorted(found)]


def test_no_unmarked_function_local_import_in_shipped_code():
    found = []
    for package in LOCAL_IMPORT_PACKAGES:
        for path in shipped_files(package):
            found += unmarked_local_imports(path.read_text(), str(path.relative_to(REPO)))
    assert not found, "function-local imports without a `# lazy:/optional:/cycle:` reason:\n" + "\n".join(found)


def test_the_local_import_checker_needs_a_reason():
    source = """
import json
def a():
    import os
def b():
    import ray  # optional: ray
async def c():
    if True:
        from x import (  # cycle: x imports us
            y,
        )
        from z import w
"""
    assert unmarked_local_imports(source, "s.py") == ["s.py:4", "s.py:12"]
