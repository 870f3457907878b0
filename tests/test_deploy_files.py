"""docker-compose.yml must parse and describe the services the README promises."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def test_compose_file_has_redis_postgres_and_a_scalable_worker() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "worker"} <= set(services)
    worker = services["worker"]
    assert "container_name" not in worker  # a fixed name would forbid --scale worker=N
    env = worker["environment"]
    assert env["IMGBATCH_REDIS_URL"].startswith("redis://redis:")
    assert env["IMGBATCH_DATABASE_URL"].startswith("postgresql://")
    assert set(worker["depends_on"]) == {"redis", "postgres"}
    assert (REPO / worker["build"] / "Dockerfile").is_file()
