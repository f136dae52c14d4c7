"""One-way imports (DESIGN.md §1): api → storage; worker → storage, trainer; trainer → ML libraries only.

Checked statically over every module, so a stray import fails here before it couples the layers.
"""

from __future__ import annotations

import ast
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
FORBIDDEN_THIRD_PARTY = {
    "trainer": {"sqlalchemy", "fastapi", "celery", "redis", "boto3", "pydantic_settings", "httpx"},
    "storage": {"torch", "diffusers", "transformers", "peft", "fastapi", "celery"},
    "api": {"torch", "diffusers", "transformers", "peft", "bitsandbytes", "accelerate"},
    "worker": {"fastapi"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
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


def test_no_print_in_the_service() -> None:
    for package in ("trainer", "storage", "api", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                     and isinstance(n.func, ast.Name) and n.func.id == "print"]
            assert not calls, f"{path.relative_to(ROOT)} calls print()"


def test_no_pickle_loading_anywhere() -> None:
    for package in ("trainer", "storage", "api", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            assert "torch.load(" not in text and "pickle.load" not in text, f"{path.relative_to(ROOT)} unpickles"
