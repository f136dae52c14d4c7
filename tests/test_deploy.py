"""docker-compose.yml and the Dockerfile describe a deployment that the code can actually run.

No Docker engine runs here or on CI, so these check what can be checked without one: every service the issue
names exists with a health check or a dependency on one, GPU workers reserve a GPU, every command is a real
invocation of our CLI or app factory, and the Dockerfile copies what exists.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from worker.cli.commands import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_and_health_checks(compose: dict) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "api", "train-worker", "generate-worker", "reconciler"} <= set(services)
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name], name
    for name in ("api", "train-worker", "generate-worker", "reconciler"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"


def test_a_train_and_a_generate_worker_on_each_of_several_gpus(compose: dict) -> None:
    """Every worker service reserves exactly one GPU by id; each GPU has one worker of each queue."""
    per_gpu: dict[str, list[str]] = {}
    for service in compose["services"].values():
        command = service.get("command") or []
        if command[:2] != ["styledrop", "worker"]:
            continue
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and "count" not in device
        (gpu,) = device["device_ids"]
        per_gpu.setdefault(gpu, []).append(command[command.index("--queue") + 1])
    assert len(per_gpu) >= 2 and all(sorted(q) == ["generate", "train"] for q in per_gpu.values()), per_gpu


def test_every_command_is_a_real_invocation(compose: dict) -> None:
    parser = build_parser()
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or service.get("image", "").startswith(("postgres", "redis")):
            continue
        if command[0] == "styledrop":
            parser.parse_args(command[1:])  # SystemExit (a failure) on an unknown subcommand or option
        else:
            assert command[:3] == ["uvicorn", "api.main:create_app", "--factory"], name
    env = compose["x-app"]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql+psycopg://") and env["BROKER_URL"].startswith("redis://")


def test_the_api_command_builds_the_app_its_health_check_probes(compose: dict, tmp_path: Path) -> None:
    """uvicorn's own importer resolves the compose command's factory, and the app it builds serves the path the
    compose health check opens."""
    from uvicorn.importer import import_from_string

    from storage.settings import Settings
    from tests.helpers.app import app_client

    api = compose["services"]["api"]
    factory = import_from_string(api["command"][1])
    probe = re.search(r"http://127\.0\.0\.1:8000(/\w+)", " ".join(api["healthcheck"]["test"]))
    assert probe, api["healthcheck"]
    with app_client(Settings(data_dir=tmp_path, secret_key="x")) as client:
        assert client.app.__class__ is factory(Settings(data_dir=tmp_path, secret_key="x")).__class__
        assert client.get(probe.group(1)).status_code == 200


def test_dockerfile_copies_what_exists_and_pins_a_torch_the_project_accepts() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    pin = re.search(r'pip install "torch==([\w.]+)"', dockerfile)
    assert pin, "the Dockerfile installs torch pinned, before the project"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_spec,) = [Requirement(d) for d in project["dependencies"] if Requirement(d).name == "torch"]
    assert torch_spec.specifier.contains(pin.group(1)), (pin.group(1), str(torch_spec.specifier))
