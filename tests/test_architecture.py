"""One-way imports (docs/architecture.md): api → storage; worker → storage, trainer; trainer → ML libraries only.

Checked statically over every module, so a stray import fails here before it couples the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"trainer", "trainer.contracts", "storage", "api", "worker"}
CONTRACTS = "trainer.contracts"  # the engine's torch-free leaf: the one part of trainer/ the service may import
ALLOWED = {
    "trainer": {CONTRACTS},
    "storage": {CONTRACTS},
    "api": {"storage", CONTRACTS},
    "worker": {"storage", "trainer", CONTRACTS},
}
FORBIDDEN_THIRD_PARTY = {
    "trainer": {"sqlalchemy", "fastapi", "celery", "redis", "boto3", "pydantic_settings", "httpx"},
    "storage": {"torch", "diffusers", "transformers", "peft", "fastapi", "celery"},
    "api": {"torch", "diffusers", "transformers", "peft", "bitsandbytes", "accelerate"},
    "worker": {"fastapi"},
}


def _root(module: str) -> str:
    return CONTRACTS if module == CONTRACTS or module.startswith(CONTRACTS + ".") else module.split(".")[0]


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(_root(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(_root(node.module))
    return roots


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        roots = imported_roots(path)
        for bad in sorted((roots & OURS) - ALLOWED[package] - {package}):
            problems.append(f"{path.relative_to(ROOT)} imports {bad}")
        for bad in sorted(roots & FORBIDDEN_THIRD_PARTY[package]):
            problems.append(f"{path.relative_to(ROOT)} imports {bad}")
    assert not problems, "\n".join(problems)


def test_trainer_reads_no_settings_or_environment() -> None:
    for path in sorted((ROOT / "trainer").rglob("*.py")):
        text = path.read_text()
        assert "os.environ" not in text and "getenv" not in text, f"{path.name} reads the environment"


def test_service_modules_log_through_their_own_logger() -> None:
    """Module loggers (`logging.getLogger(__name__)`), never the root logger (`logging.info(...)`), so each line
    names its module and levels can be set per package. (print is ruff's T20 rule.)"""
    root_calls = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    problems = []
    for package in ("trainer", "storage", "api", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
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
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            assert "torch.load(" not in text and "pickle.load" not in text, f"{path.relative_to(ROOT)} unpickles"
