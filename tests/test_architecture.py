"""One-way imports (docs/architecture.md): api → storage; worker → storage, trainer; trainer → ML libraries only.

Checked statically over every module, so a stray import fails here before it couples the layers.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"trainer", "storage", "api", "worker"}
ALLOWED = {
    "trainer": set(),
    "storage": set(),
    "api": {"storage"},
    "worker": {"storage", "trainer"},
}
# The one edge across the wall: the engine's torch-free contracts (limits, defaults, prompt rules), which the
# service imports instead of restating them (docs/architecture.md).
CONTRACTS = "trainer.contracts"
MAY_IMPORT_CONTRACTS = {"api", "storage"}
CONTRACTS_THIRD_PARTY = {"PIL", "numpy"}  # besides the standard library: image normalisation (Pillow, numpy)
FORBIDDEN_THIRD_PARTY = {
    "trainer": {"sqlalchemy", "fastapi", "celery", "redis", "boto3", "pydantic_settings", "httpx"},
    "storage": {"torch", "diffusers", "transformers", "peft", "fastapi", "celery"},
    "api": {"torch", "diffusers", "transformers", "peft", "bitsandbytes", "accelerate"},
    "worker": {"fastapi"},
}


def package_files(package: str) -> list[Path]:
    """Every .py file of the package, following links: storage/migrations is a link to alembic/, and Python
    3.11's `Path.rglob` does not follow links, so a plain rglob would leave the migrations unchecked."""
    found = []
    for folder, _dirs, files in os.walk(ROOT / package, followlinks=True):
        found.extend(Path(folder) / f for f in files if f.endswith(".py"))
    return sorted(found)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (they never run, so they make no import edge)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imported_modules(path: Path) -> set[str]:
    """Dotted names this file imports at run time (anywhere in it); relative imports resolved; `from a import b`
    gives `a.b` as well as `a`, since b may be a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_only(tree)
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def imported_roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def _crosses_the_wall(package: str, name: str) -> bool:
    root = name.split(".")[0]
    if root not in OURS or root == package or root in ALLOWED[package]:
        return False
    return not (package in MAY_IMPORT_CONTRACTS and (name == CONTRACTS or name.startswith(CONTRACTS + ".")))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    problems = []
    for path in package_files(package):
        for bad in sorted(n for n in imported_modules(path) if _crosses_the_wall(package, n)):
            problems.append(f"{path.relative_to(ROOT)} imports {bad}")
        for bad in sorted(imported_roots(path) & FORBIDDEN_THIRD_PARTY[package]):
            problems.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not problems, "\n".join(problems)


# The Python client (styledrop/) talks to the service over HTTP only: a user installs it without the service's
# packages, so it imports httpx and the standard library, nothing else of ours or of anyone's.
CLIENT = "styledrop"
CLIENT_THIRD_PARTY = {"httpx"}


def test_the_client_imports_only_httpx_and_the_standard_library() -> None:
    problems = []
    for path in package_files(CLIENT):
        for name in sorted(imported_modules(path)):
            root = name.split(".")[0]
            if root not in sys.stdlib_module_names and root not in CLIENT_THIRD_PARTY | {CLIENT, "__future__"}:
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert package_files(CLIENT), "styledrop/ has no modules"
    assert not problems, "\n".join(problems)


def test_the_client_imports_nothing_of_the_service_at_run_time() -> None:
    """A fresh interpreter: importing the client loads none of the service's packages, nor pydantic or torch."""
    code = ("import sys, styledrop, styledrop.client; "
            "print(','.join(sorted(m for m in ('api', 'storage', 'trainer', 'worker', 'pydantic', 'torch', "
            "'sqlalchemy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"importing the client loaded {out.stdout.strip()}"


def test_the_migrations_are_checked_with_storage() -> None:
    checked = {module_name(p) for p in package_files("storage")}
    assert "storage.migrations.env" in checked
    assert {f"storage.migrations.versions.{p.stem}" for p in (ROOT / "alembic" / "versions").glob("*.py")} <= checked


def test_engine_contracts_are_a_leaf() -> None:
    """trainer/contracts imports only the standard library, Pillow and itself: never the rest of the engine."""
    problems = []
    for path in package_files("trainer/contracts"):
        for name in sorted(imported_modules(path)):
            root = name.split(".")[0]
            inside = name == CONTRACTS or name.startswith(CONTRACTS + ".")
            if not (root in sys.stdlib_module_names or root in CONTRACTS_THIRD_PARTY or root == "__future__"
                    or inside):
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not problems, "\n".join(problems)


def _file_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in sorted(OURS) for p in package_files(package)}
    return {mod: {n for n in imported_modules(path) if n in files and n != mod} for mod, path in files.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one file (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_between_files() -> None:
    """A circle (a imports b imports a) only works by import order or an import hidden inside a function; every
    import counts here, wherever it is written (those under `if TYPE_CHECKING:` never run and do not)."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the checker finds one
    assert _circles(_file_graph()) == []


def test_trainer_reads_no_settings_or_environment() -> None:
    for path in package_files("trainer"):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, f"{path.name} reads the environment"


def test_service_modules_log_through_their_own_logger() -> None:
    """Module loggers (`logging.getLogger(__name__)`), never the root logger (`logging.info(...)`), so each line
    names its module and levels can be set per package. (print is ruff's T20 rule.)"""
    root_calls = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    problems = []
    for package in ("trainer", "storage", "api", "worker"):
        for path in package_files(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "logging"):
                    continue
                if node.func.attr in root_calls:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} logs on the root logger")
                named = node.args[0] if node.args else None
                by_module = isinstance(named, ast.Name) and named.id == "__name__"
                alembic_env = path.relative_to(ROOT).as_posix() == "storage/migrations/env.py"  # Alembic's convention
                if node.func.attr == "getLogger" and not by_module and not alembic_env:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} names its logger by hand")
    assert not problems, "\n".join(problems)


def test_no_pickle_loading_anywhere() -> None:
    for package in ("trainer", "storage", "api", "worker"):
        for path in package_files(package):
            text = path.read_text()
            assert "torch.load(" not in text and "pickle.load" not in text, f"{path.relative_to(ROOT)} unpickles"


def test_engine_contracts_import_without_torch() -> None:
    """The service imports `trainer.contracts`; that must not load the engine (torch and the rest), which the API
    process neither has room for nor needs. A fresh interpreter, so nothing imported earlier hides it."""
    code = ("import sys, trainer.contracts, trainer.contracts.limits, trainer.contracts.prompts, api.schemas; "
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"importing the contracts loaded {out.stdout.strip()}"


def test_tests_and_benchmarks_do_not_import_each_other() -> None:
    """What both need is testkit/ (which imports neither), so a benchmark runs without the test suite's helpers
    and a test never depends on a benchmark script."""
    problems = []
    for folder, banned in (("tests", {"bench"}), ("bench", {"tests"}), ("testkit", {"tests", "bench"})):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for bad in sorted(imported_roots(path) & banned):
                problems.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not problems, "\n".join(problems)


def test_code_and_docs_point_at_code_papers_or_docs_not_at_issues_or_commits() -> None:
    """Comments and docs cite the code, papers or docs/; an issue number, a commit hash or a work session means
    nothing to the next reader. (Upstream projects' issues, such as diffusers', are citations and stay.)"""
    patterns = [re.compile(r"\bissues? #?\d+\b", re.I), re.compile(r"\bcommits? [0-9a-f]{7,40}\b"),
                re.compile(r"\bnot_drawn\b"), re.compile(r"\b(this|other) sessions?'? (load|work)\b|this session\b")]
    upstream = re.compile(r"(diffusers|peft|transformers|torch|pytorch|celery|starlette)[ /]?(issue|#)", re.I)
    problems = []
    folders = ["trainer", "storage", "api", "worker", "styledrop", "tests", "bench", "testkit", "docs", "scripts",
               "alembic"]
    paths = [ROOT / "README.md"] + [p for f in folders for p in sorted((ROOT / f).rglob("*")) if p.is_file()]
    for path in paths:
        if (path.suffix not in {".py", ".md", ".sh", ".html", ".js", ""} or "__pycache__" in path.parts
                or path == Path(__file__).resolve()):  # this test names the patterns it looks for
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(p.search(line) for p in patterns) and not upstream.search(line):
                problems.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not problems, "\n".join(problems)
