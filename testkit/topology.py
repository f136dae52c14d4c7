"""The scaled-out shape as real processes on 127.0.0.1, for tests/test_topology.py and bench/failover.py: shared
PostgreSQL, Redis and an S3 endpoint (moto's server); API processes, train and generate workers and reconcilers,
each started with its own data directory, so nothing can pass between them through a local disk."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from testkit.stack import Stack, service_env

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "S3_REGION": "us-east-1"}


def topology_env(tmp: Path, db_url: str, broker_url: str, s3_endpoint: str, bucket: str,
                 **extra: str) -> dict[str, str]:
    """Every process's settings: the shared services, S3 blobs, the tiny model on CPU, short intervals."""
    return service_env(tmp / "shared", **{
        "DATABASE_URL": db_url, "BROKER_URL": broker_url, "STYLEDROP_BLOB_BACKEND": "s3", "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS, "STYLEDROP_SECRET_KEY": "topology-secret",
        "STYLEDROP_CHECKPOINT_EVERY": "2", "STYLEDROP_PROGRESS_EVERY": "1", "STYLEDROP_PREVIEW_PROMPTS": '["a cat"]',
        "STYLEDROP_MAX_CONCURRENT_JOBS_PER_USER": "20", "STYLEDROP_WEBHOOK_ALLOW_PRIVATE": "true", **extra,
    })


class Topology(Stack):
    """A `Stack` whose every process gets its own data directory (`<tmp>/<name>/data`)."""

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env, self.env = self.env, {**self.env, "STYLEDROP_DATA_DIR": str(self.data_dir(name))}
        try:
            return super().spawn(name, *args)
        finally:
            self.env = env

    def data_dir(self, name: str) -> Path:
        path = self.tmp / name / "data"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def data_dirs(self) -> list[Path]:
        return [self.tmp / log.stem / "data" for _, log in self.procs]

    def worker(self, queue: str, n: int) -> subprocess.Popen[bytes]:
        return self.spawn(f"{queue}{n}", "-m", "worker.cli", "worker", "--queue", queue)

    def reconciler(self, n: int) -> subprocess.Popen[bytes]:
        return self.spawn(f"reconcile{n}", "-m", "worker.cli", "reconcile")

    def proc_of(self, worker_host: str) -> subprocess.Popen[bytes]:
        """The process that wrote `worker_host` (`<hostname>:<pid>`) on a row."""
        host, pid = worker_host.rsplit(":", 1)
        assert host == socket.gethostname(), worker_host
        (proc,) = [p for p, _ in self.procs if p.pid == int(pid)]
        return proc


def create_users(db_url: str, n: int) -> list[str]:
    """`n` users made directly in the database (a CLI process per user costs seconds); their API keys."""
    from storage.db import make_engine, make_sessionmaker
    from storage.users import create_api_key, create_user

    engine = make_engine(db_url)
    keys = []
    with make_sessionmaker(engine)() as session:
        for i in range(n):
            user = create_user(session, f"user{i}")
            keys.append(create_api_key(session, user.id)[1])
        session.commit()
    engine.dispose()
    return keys


def local_blob_files(data_dirs: list[Path]) -> list[Path]:
    """Every file under the processes' data directories except the tiny model each worker builds under models/:
    with S3 as the blob store (and PostgreSQL, Redis) a process has nothing else to write there."""
    found = []
    for root in data_dirs:
        for dirpath, _, files in os.walk(root):
            rel = Path(dirpath).relative_to(root)
            if rel.parts[:1] == ("models",):
                continue
            found += [Path(dirpath) / f for f in files]
    return found
