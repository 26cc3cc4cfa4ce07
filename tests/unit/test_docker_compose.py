"""The Docker deployment (docker-compose.yml, Dockerfile, .dockerignore), checked as files.

No Docker engine is needed: the compose file is parsed with PyYAML (anchors and merge
keys included), and compose's variable interpolation (``${VAR:?err}``, ``${VAR:-x}``,
``$$``) is reproduced here, so that what is checked is what compose would run.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

APP_SERVICES = ("migrate", "worker", "dispatcher", "flower")
APP_ENV = ("WORKER_BRIDGE_DATABASE_URL", "CELERY_BROKER_URL", "WORKER_BRIDGE_JOBS")
#: Variables compose must refuse to start without (no default in the file).
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")
#: The environment compose is run with in these tests. HOSTNAME is the *host's*: it
#: must not leak into the worker's health check, which needs the container's.
RUN_ENV = {
    "POSTGRES_PASSWORD": "pw-from-the-environment",
    "FLOWER_BASIC_AUTH": "admin:from-the-environment",
    "HOSTNAME": "the-docker-host",
}

COMMANDS = {
    "migrate": ["worker-bridge", "db", "upgrade"],
    "worker": ["celery", "-A", "worker_bridge", "worker", "--loglevel", "INFO"],
    "dispatcher": ["celery", "-A", "worker_bridge", "beat", "--loglevel", "INFO"],
    "flower": ["celery", "-A", "worker_bridge", "flower", "--port", "5555"],
}


# --- compose interpolation ------------------------------------------------------------


class MissingVariableError(Exception):
    """What compose reports for ``${VAR:?message}`` (or ``${VAR?message}``) when unset."""


_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})"
)


def interpolate_value(value: str, env: Mapping[str, str]) -> str:
    """Substitute variables in one string as compose does."""
    if "$" in _VARIABLE.sub("", value):
        raise ValueError(f"invalid interpolation format in {value!r}")

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["named"] or match["braced"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        # With a colon, an empty value counts as unset.
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op is None:
            return current or ""
        if op.endswith("-"):
            return arg if unset else str(current)
        if op.endswith("?"):
            if unset:
                raise MissingVariableError(f"required variable {name} is missing: {arg}")
            return str(current)
        return "" if unset else arg  # ":+" / "+"

    return _VARIABLE.sub(substitute, value)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Interpolate every string value of a parsed compose document."""
    if isinstance(node, str):
        return interpolate_value(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    return node


# --- normalisers for compose's alternative syntaxes ------------------------------------


def argv(command: str | list[str]) -> list[str]:
    """A command as argv, with ``--option=value`` split into two tokens."""
    tokens = shlex.split(command) if isinstance(command, str) else [str(t) for t in command]
    out: list[str] = []
    for token in tokens:
        if token.startswith("--") and "=" in token:
            out.extend(token.split("=", 1))
        else:
            out.append(token)
    return out


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    """Dependency name -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def healthcheck_shell(service: Mapping[str, Any]) -> tuple[str, str]:
    """(form, command) of a service's health check: form is CMD-SHELL or CMD."""
    check = service.get("healthcheck")
    assert check, "no health check"
    assert not check.get("disable"), "health check disabled"
    test = check["test"]
    if isinstance(test, str):
        return "CMD-SHELL", test
    form, *rest = test
    assert form in ("CMD", "CMD-SHELL"), f"health check test {test!r} runs nothing"
    return form, rest[0] if form == "CMD-SHELL" else shlex.join(rest)


def published_ports(service: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(published, target) port pairs of a service, in short or long syntax."""
    pairs: set[tuple[str, str]] = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            pairs.add((str(port.get("published", "")), str(port["target"])))
            continue
        parts = str(port).split("/")[0].split(":")
        target = parts[-1]
        published = parts[-2] if len(parts) >= 2 else ""
        pairs.add((published, target))
    return pairs


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = interpolate(raw, RUN_ENV)
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


# --- docker-compose.yml ------------------------------------------------------------------


def test_services_exist(services: dict[str, Any]) -> None:
    expected = {"postgres", "redis", *APP_SERVICES}
    assert expected <= set(services), f"missing services: {expected - set(services)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_service_runs_its_command_on_this_projects_image(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    expected = COMMANDS[name]
    command = argv(service["command"])
    core = expected[:4] if expected[0] == "celery" else expected
    assert command[: len(core)] == core, f"{name} runs {command}"
    for option, value in zip(expected[len(core) :: 2], expected[len(core) + 1 :: 2], strict=True):
        assert option in command, f"{name} lacks {option}"
        assert command[command.index(option) + 1] == value, f"{name}: {option} is not {value}"
    build = service.get("build")
    context = build.get("context", ".") if isinstance(build, dict) else build
    assert context in (".", "./"), f"{name} is not built from this project (build: {build!r})"


def test_app_services_share_one_environment(services: dict[str, Any]) -> None:
    envs = {name: environment(services[name]) for name in APP_SERVICES}
    for name, env in envs.items():
        missing = [var for var in APP_ENV if not env.get(var)]
        assert not missing, f"{name} lacks {missing}"
    shared = {var: envs["worker"][var] for var in APP_ENV}
    for name, env in envs.items():
        assert {var: env[var] for var in APP_ENV} == shared, f"{name} differs from worker"
    assert shared["WORKER_BRIDGE_JOBS"] == "jobs"
    broker = make_url(shared["CELERY_BROKER_URL"])
    assert broker.drivername == "redis"
    assert broker.host == "redis" and "redis" in services


def test_database_url_points_at_the_postgres_service(services: dict[str, Any]) -> None:
    """No service falls back on an embedded or local default database."""
    postgres_env = environment(services["postgres"])
    built_here = [name for name, service in services.items() if "build" in service]
    assert set(APP_SERVICES) <= set(built_here)
    for name in built_here:
        value = environment(services[name]).get("WORKER_BRIDGE_DATABASE_URL")
        assert value, f"{name} would use the library's default database"
        url = make_url(value)
        assert url.get_backend_name() == "postgresql", f"{name} uses {url.drivername}"
        assert url.drivername == "postgresql+psycopg"
        assert url.host == "postgres", f"{name} connects to {url.host}, not the postgres service"
        assert url.port in (None, 5432)
        assert url.username == postgres_env.get("POSTGRES_USER", "postgres")
        assert url.database == postgres_env.get("POSTGRES_DB", url.username)
        assert url.password == RUN_ENV["POSTGRES_PASSWORD"], "password not from the environment"
    for name, service in services.items():
        for key, value in environment(service).items():
            assert "sqlite" not in value.lower(), f"{name}: {key} is SQLite"


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
@pytest.mark.parametrize("value", [None, ""])
def test_compose_refuses_to_start_without_a_secret(
    raw: dict[str, Any], secret: str, value: str | None
) -> None:
    env = {key: val for key, val in RUN_ENV.items() if key != secret}
    if value is not None:
        env[secret] = value
    with pytest.raises(MissingVariableError, match=secret):
        interpolate(raw, env)


def test_postgres_service(services: dict[str, Any], compose: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert str(postgres["image"]).split(":")[0] in ("postgres", "docker.io/library/postgres")
    assert environment(postgres)["POSTGRES_PASSWORD"] == RUN_ENV["POSTGRES_PASSWORD"]
    volumes = [
        str(v).split(":") if not isinstance(v, dict) else [v["source"], v["target"]]
        for v in postgres.get("volumes") or []
    ]
    named = [source for source, target, *_ in volumes if target.startswith("/var/lib/postgresql")]
    assert named, "PostgreSQL's data is not on a volume"
    assert named[0] in (compose.get("volumes") or {}), f"{named[0]} is not a named volume"
    _form, check = healthcheck_shell(postgres)
    assert "pg_isready" in check


def test_redis_health_check(services: dict[str, Any]) -> None:
    _form, check = healthcheck_shell(services["redis"])
    assert "redis-cli" in check and "ping" in check.lower()


def test_worker_health_check_pings_this_worker(services: dict[str, Any]) -> None:
    worker = services["worker"]
    form, check = healthcheck_shell(worker)
    assert form == "CMD-SHELL", "the node name needs the shell to expand the hostname"
    assert RUN_ENV["HOSTNAME"] not in check, "compose substituted the host's HOSTNAME: use $$"
    tokens = argv(check)
    assert tokens[:3] == ["celery", "-A", "worker_bridge"]
    assert "inspect" in tokens and tokens[tokens.index("inspect") + 1] == "ping"
    destination = next(
        (tokens[i + 1] for i, t in enumerate(tokens) if t in ("-d", "--destination")), None
    )
    assert destination is not None, "without a destination any worker's reply would do"
    assert re.fullmatch(r"celery@(\$HOSTNAME|\$\{HOSTNAME\}|\$\(hostname\))", destination)
    # The check names the default node, celery@<hostname>: the worker must keep it.
    command = argv(worker["command"])
    assert "-n" not in command and "--hostname" not in command


def test_start_order(services: dict[str, Any]) -> None:
    assert depends_on(services["migrate"]).get("postgres") == "service_healthy"
    for name in ("worker", "dispatcher"):
        deps = depends_on(services[name])
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("redis") == "service_healthy", name
    assert depends_on(services["flower"]).get("redis") == "service_healthy"
    # A one-shot: compose's service_completed_successfully needs it to exit, not restart.
    assert services["migrate"].get("restart") == "no"
    # Waiting for a service to be healthy needs that service to have a health check.
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition == "service_healthy":
                assert services[dependency].get("healthcheck"), f"{dependency} has no check"


def test_flower_requires_basic_auth_from_the_environment(services: dict[str, Any]) -> None:
    flower = services["flower"]
    command = argv(flower["command"])
    from_option = command[command.index("--basic-auth") + 1] if "--basic-auth" in command else None
    credentials = environment(flower).get("FLOWER_BASIC_AUTH") or from_option
    assert credentials == RUN_ENV["FLOWER_BASIC_AUTH"], "basic auth not from the environment"
    assert ("5555", "5555") in published_ports(flower), "port 5555 is not published"


# --- Dockerfile and .dockerignore ------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps PATH out of the build context (last match wins;
    a pattern matching a parent directory matches its contents)."""
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for line in patterns:
        negated = line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        if any(fnmatchcase(candidate, pattern) for candidate in candidates):
            ignored = not negated
    return ignored


def project_files() -> set[str]:
    """What `pip install .` needs: pyproject.toml, the readme, the modules and packages."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {f"{module}.py" for module in setuptools.get("py-modules", [])}
    needed |= {
        pattern.rstrip("*").rstrip(".") for pattern in setuptools["packages"]["find"]["include"]
    }
    return needed


def copy_sources(args: str) -> list[str]:
    tokens = [t for t in shlex.split(args) if not t.startswith("--")]
    return [t.rstrip("/") or "." for t in tokens[:-1]]


def test_dockerfile_base_image_is_slim_python_3_11() -> None:
    images = [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]
    assert images and images[-1].startswith("python:3.11-slim")


def test_dockerfile_installs_the_project_from_its_own_files() -> None:
    instructions = dockerfile_instructions()
    copies = [(i, copy_sources(args)) for i, (kw, args) in enumerate(instructions) if kw == "COPY"]
    sources = [source for _, group in copies for source in group]
    assert sources, "nothing copied into the image"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the project"
        if source != ".":
            assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    copied = set(sources)
    for needed in sorted(project_files()):
        assert needed in copied or ("." in copied and not dockerignored(needed)), needed
        # Every source file of a copied package reaches the build context.
        for file in (ROOT / needed).rglob("*") if (ROOT / needed).is_dir() else []:
            relative = file.relative_to(ROOT).as_posix()
            if file.is_file() and "__pycache__" not in relative:
                assert not dockerignored(relative), f"{relative} excluded by .dockerignore"
    last_copy = max(i for i, _ in copies)
    installs = [
        (i, shlex.split(args.replace("&&", " ; ")))
        for i, (kw, args) in enumerate(instructions)
        if kw == "RUN" and "pip install" in args
    ]
    project_install = [
        i for i, tokens in installs if any(t in (".", "./") for t in tokens) and i > last_copy
    ]
    assert project_install, "no `pip install .` after the project's files are copied"
    assert any(t.lower().startswith("flower") for _, tokens in installs for t in tokens), (
        "Flower is not installed"
    )


def test_dockerfile_does_not_run_as_root() -> None:
    users = [args.split(":")[0] for kw, args in dockerfile_instructions() if kw == "USER"]
    assert users, "no USER instruction: the container would run as root"
    assert users[-1] not in ("root", "0"), f"runs as {users[-1]}"


def test_no_secret_baked_into_the_image() -> None:
    for keyword, args in dockerfile_instructions():
        if keyword in ("ENV", "ARG"):
            assert not re.search(
                r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|DATABASE_URL|BROKER_URL", args, re.IGNORECASE
            ), f"{keyword} {args}"
    for path in (".env", ".git", ".venv", "tests"):
        assert dockerignored(path), f"{path} reaches the build context"
