"""Error codes and states have one home each (storage/error_codes.py, storage/states.py): the README's tables list
exactly the codes defined there, each under the HTTP status the API answers it with, and no module writes a code or
a state as a free string."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from storage.error_codes import ErrorCode, FailureCode

ROOT = Path(__file__).resolve().parent.parent
SERVICE_ERRORS = {"Unauthorized": 401, "Forbidden": 403, "NotFound": 404, "Conflict": 409, "Gone": 410,
                  "TooLarge": 413, "UnsupportedMedia": 415, "Invalid": 422, "RateLimited": 429, "Unavailable": 503}


def _readme_table(heading: str) -> dict[str, int | None]:
    """The codes of the README table that follows `heading`: {code: status}, the status None for a table with no
    status column. Text in parentheses explains a code and is not read."""
    text = (ROOT / "README.md").read_text()
    rows = text[text.index(heading):].split("\n\n")[1].splitlines()
    assert rows[0].startswith("| ") and rows[1].startswith("|---"), f"no table after {heading!r}"
    codes: dict[str, int | None] = {}
    for row in rows[2:]:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        status = int(cells[0]) if cells[0].isdigit() else None
        described = cells[-1]
        while re.search(r"\([^()]*\)", described):
            described = re.sub(r"\([^()]*\)", "", described)
        for code in re.findall(r"`([a-z_]+)`", described if status is not None else cells[0]):
            assert code not in codes, f"{code} is listed twice"
            codes[code] = status
    return codes


def _code_of(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ErrorCode":
        return ErrorCode[node.attr].value
    return None


def _statuses_in_code() -> dict[str, set[int]]:
    """{code: statuses} as the API raises them: `Invalid(..., code=ErrorCode.X)`, a ServiceError class's own code,
    and `problem(503, ErrorCode.X, ...)`-style calls whose first integer is the status."""
    found: dict[str, set[int]] = {}
    for path in sorted((ROOT / "api").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                kw = {k.arg: k.value for k in node.keywords}
                if "code" in kw and isinstance(kw.get("status"), ast.Constant):
                    found.setdefault(_code_of(kw["code"]) or "?", set()).add(kw["status"].value)  # type: ignore[union-attr]
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            status = SERVICE_ERRORS.get(name)
            codes = [c for c in (_code_of(k.value) for k in node.keywords if k.arg == "code") if c]
            ints = [a.value for a in node.args if isinstance(a, ast.Constant) and type(a.value) is int]
            positional = [c for c in (_code_of(a) for a in node.args) if c]
            if status is not None:
                for code in codes:
                    found.setdefault(code, set()).add(status)
            elif positional and ints:
                found.setdefault(positional[0], set()).add(ints[0])
    return found


def test_the_readme_lists_every_problem_code_under_its_status() -> None:
    listed = _readme_table("The codes:")
    assert set(listed) == {c.value for c in ErrorCode}, (
        f"missing from the README: {sorted({c.value for c in ErrorCode} - set(listed))}; "
        f"not codes: {sorted(set(listed) - {c.value for c in ErrorCode})}")
    raised = _statuses_in_code()
    assert raised, "no raise site found: the scan is broken"
    wrong = {code: (sorted(statuses), listed[code]) for code, statuses in raised.items()
             if statuses != {listed[code]}}
    assert not wrong, f"raised with another status than the README says (raised, README): {wrong}"


def test_the_readme_lists_every_failure_code() -> None:
    assert set(_readme_table("A failed job or generation")) == {c.value for c in FailureCode}


def test_no_module_writes_an_error_code_as_a_string() -> None:
    """Every code is written as a member (`ErrorCode.NOT_FOUND`, `FailureCode.STYLE_MISSING`), so a typo is a
    NameError or a type error instead of a new code nobody documented."""
    codes = {c.value for c in ErrorCode} | {c.value for c in FailureCode}
    problems = []
    for package in ("api", "storage", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() == "storage/error_codes.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in codes:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not problems, "\n".join(problems)


def test_no_module_names_a_state_as_a_string() -> None:
    """States are named through storage/states.py (its docstring says why); the migrations are history and keep
    the strings they were written with."""
    from storage.states import DeliveryState, GenerationState, JobState

    states = {s.value for enum in (JobState, GenerationState, DeliveryState) for s in enum}
    problems = []
    for package in ("api", "storage", "worker"):
        for path in sorted((ROOT / package).rglob("*.py")):  # rglob skips storage/migrations (a link)
            if path.relative_to(ROOT).as_posix() == "storage/states.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in states:
                    problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not problems, "\n".join(problems)
