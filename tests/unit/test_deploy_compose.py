"""deploy/Dockerfile, .dockerignore, deploy/docker-compose.yml and deploy/.env.example, checked statically.

No Docker engine runs where the tests run, so the image is never built here: the Dockerfile is parsed by
BuildKit's parser (PyPI ``dockerfile``), then checked (stages, the final stage's user, health check,
entrypoint and command, what it copies from the build context), and the commands it and compose give
``crewflow`` are parsed by crewflow's own CLI parser. ``docker compose config`` is run too when a compose
plugin is installed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dockerfile as buildkit
import pytest
import yaml

from crewflow.entrypoints.cli import build_parser
from crewflow.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"

CREWFLOW_SERVICES = {"api", "worker", "migrate"}
EXPECTED_SERVICES = CREWFLOW_SERVICES | {"postgres", "redis", "mongodb", "sandbox"}
SECRET_NAME = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|API_KEY|_KEY$|_URL$)")
PLACEHOLDER = {"", "change-me"}


# --- the Dockerfile, read by BuildKit's own parser (the `dockerfile` package wraps the Go code) -------------


@dataclass
class Instruction:
    keyword: str
    flags: tuple[str, ...] = ()
    value: tuple[str, ...] = ()
    json: bool = False

    @property
    def args(self) -> str:
        return " ".join((*self.flags, *self.value))

    def exec_form(self) -> list[str] | None:
        """The JSON ("exec") form's words, None for the shell form."""
        return list(self.value) if self.json else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def text(self, keyword: str) -> str:
        return "\n".join(i.args for i in self.all(keyword))


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in buildkit.parse_string(text):
        keyword = command.cmd.upper()
        if keyword == "FROM":
            words = command.value
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
            key, _, default = command.value[0].partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, command.flags, command.value, command.json))
    return global_args, stages


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _stage_args(stage: Stage, global_args: dict[str, str]) -> dict[str, str]:
    values = dict(global_args)
    for arg in stage.all("ARG"):
        key, _, default = arg.args.partition("=")
        values[key] = default or global_args.get(key, "")
    return values


def test_the_dockerfile_builds_the_canvas_and_the_package_in_separate_stages_and_ships_a_slim_image(dockerfile):
    global_args, stages = dockerfile
    names = [s.name for s in stages]
    assert len(stages) >= 3 and len(set(names)) == len(names)

    node = [s for s in stages if expand(s.base, global_args).startswith("node:")]
    assert len(node) == 1, "one Node.js stage builds the canvas"
    node_runs = node[0].text("RUN")
    assert "npm ci" in node_runs and "npm run build" in node_runs
    assert (node[0].last("WORKDIR") or Instruction("", "")).args.endswith("/frontend")
    assert "frontend/package-lock.json" in node[0].text("COPY"), "npm ci needs the lock file"

    final = stages[-1]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", expand(final.base, global_args)), final.base
    assert all("npm" not in r.args and "build-essential" not in r.args for r in final.all("RUN"))
    builder = next(s for s in stages if s.name and f"--from={s.name} /opt/crewflow" in final.text("COPY"))
    assert "pip install ." in builder.text("RUN"), "the builder installs the package with its dependencies"
    assert expand(builder.base, global_args) == expand(final.base, global_args), (
        "the venv is copied between stages: both must have the same Python at the same path"
    )


def test_the_canvas_lands_where_the_installed_package_serves_it_from(dockerfile):
    _, stages = dockerfile
    node = next(s for s in stages if s.base.startswith("node:"))
    copies = [c.args for s in stages for c in s.all("COPY") if f"--from={node.name}" in c.args]
    assert copies, "the canvas stage's output is copied into the package"
    source, destination = copies[0].split()[-2:]  # COPY --from=canvas <dist> <package>/static
    assert source.rstrip("/").endswith("frontend/dist")
    # canvas.py serves <package>/static (package-data ships static/**/*) before looking for a checkout
    canvas = (ROOT / "src/crewflow/entrypoints/http/canvas.py").read_text()
    assert '_PACKAGE / "static"' in canvas
    assert destination.rstrip("/") == "src/crewflow/static"
    assert '"static/**/*"' in (ROOT / "pyproject.toml").read_text()


def test_the_final_image_runs_as_a_fixed_non_root_uid(dockerfile):
    global_args, stages = dockerfile
    final = stages[-1]
    variables = _stage_args(final, global_args)
    user = final.last("USER")
    assert user is not None, "the final stage sets USER"
    uid, _, gid = expand(user.args, variables).partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"USER must be a fixed numeric uid, not {user.args!r}"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    runs = expand(final.text("RUN"), variables)
    assert re.search(rf"useradd\b.*--uid {uid}\b", runs), "the uid exists in /etc/passwd"
    # nothing after USER switches back to root
    after = final.instructions[final.instructions.index(user) + 1 :]
    assert not [i for i in after if i.keyword in {"USER", "RUN"}]


def test_the_image_checks_healthz_and_starts_the_server_behind_a_proxy(dockerfile):
    _, stages = dockerfile
    final = stages[-1]
    health = final.last("HEALTHCHECK")
    assert health is not None
    options, _, command = health.args.partition("CMD")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    assert "http://127.0.0.1:8000/healthz" in command
    exposed = final.text("EXPOSE").split()
    assert "8000" in exposed

    entrypoint = final.last("ENTRYPOINT")
    cmd = final.last("CMD")
    assert entrypoint is not None and entrypoint.exec_form() == ["crewflow"]
    assert cmd is not None
    words = cmd.exec_form()
    assert words == ["serve", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
    args = build_parser().parse_args(words)
    assert (args.command, args.host, args.port, args.proxy_headers) == ("serve", "0.0.0.0", 8000, True)


# --- .dockerignore -----------------------------------------------------------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match plus ``**``), anchored at the context root; a
    pattern that matches a directory excludes everything under it."""
    out = ""
    i = 0
    pattern = pattern.strip("/")
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(rf"{out}(?:/.*)?")


def ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if _pattern_regex(pattern.lstrip("!")).fullmatch(path.strip("/")):
            result = not negate
    return result


def test_the_dockerignore_matcher_follows_dockers_rules():
    patterns = ["**/node_modules", "**/.env", "docs", "*.md", "!README.md"]
    assert ignored("frontend/node_modules/react/index.js", patterns)
    assert ignored("deploy/.env", patterns) and ignored(".env", patterns)
    assert ignored("docs/adr/0001.md", patterns) and ignored("CHANGES.md", patterns)
    assert not ignored("README.md", patterns)
    assert not ignored("deploy/.env.example", patterns)
    assert not ignored("src/crewflow/docs.py", patterns)


def test_the_build_context_keeps_what_the_dockerfile_copies_and_drops_secrets_and_local_state(dockerfile):
    _, stages = dockerfile
    patterns = _ignore_patterns()
    sources = []
    for stage in stages:
        for copy in stage.all("COPY"):
            if any(flag.startswith("--from") for flag in copy.flags):
                continue
            sources += copy.value[:-1]
    assert sources, "the Dockerfile copies from the build context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not ignored(source, patterns), f"COPY {source} is excluded by .dockerignore"
    for path in ["pyproject.toml", "README.md", "src/crewflow/__init__.py", "frontend/src/main.tsx",
                 "frontend/package-lock.json"]:  # fmt: skip
        assert not ignored(path, patterns), path
    for path in [".git/HEAD", ".venv/bin/python", "frontend/node_modules/react/package.json", ".env",
                 "deploy/.env", "frontend/dist/index.html", ".crewflow/crewflow.db", "tests/unit/test_cli.py",
                 "src/crewflow/__pycache__/settings.cpython-311.pyc"]:  # fmt: skip
        assert ignored(path, patterns), f"{path} would be sent to the build"


# --- docker-compose.yml ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=value: {line!r}"
            values[key.strip()] = value.strip()
    return values


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?error}`` and ``$$``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        current = env.get(name, "")
        if op == ":-":
            return current or arg
        if op == ":?":
            assert current, f"{name} is required: {arg}"
        return current

    value = re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, value.replace("$$", "\0"))
    return value.replace("\0", "$")


def test_compose_has_every_service_and_each_has_an_image_or_a_build(compose):
    services = compose["services"]
    assert set(services) == EXPECTED_SERVICES
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
    for name in CREWFLOW_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).is_file()


def _one_shot(name: str, services: dict[str, Any]) -> bool:
    """A job that runs to completion: never restarted, and waited for by its dependants to complete."""
    waits = [s["depends_on"][name]["condition"] for s in services.values() if name in s.get("depends_on", {})]
    return services[name].get("restart") == "no" and bool(waits) and set(waits) == {"service_completed_successfully"}


def test_every_long_running_service_has_a_health_check_and_one_shots_disable_it(compose):
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert isinstance(check, dict), f"{name} has no healthcheck"
        if _one_shot(name, services):
            assert check == {"disable": True}, name
            continue
        assert check.get("disable") is not True, name
        test = check["test"]
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, name
        assert {"interval", "timeout", "retries"} <= set(check), name
    assert _one_shot("migrate", services)


def test_depends_on_waits_for_health_or_completion_and_has_no_cycle(compose):
    services = compose["services"]
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions, not a bare list"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[dep]["healthcheck"].get("disable") is not True, f"{dep} has no health to wait for"
            else:
                assert condition == "service_completed_successfully" and _one_shot(dep, services)
    # the application waits for its data stores, and the migrations run before it starts
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["sandbox"]["condition"] == "service_healthy"

    seen: dict[str, int] = {}

    def visit(name: str) -> None:
        assert seen.get(name) != 1, f"depends_on cycle through {name}"
        if seen.get(name) == 2:
            return
        seen[name] = 1
        for dep in services[name].get("depends_on", {}):
            visit(dep)
        seen[name] = 2

    for name in services:
        visit(name)


def test_secrets_come_from_variables_never_literals(compose):
    text = COMPOSE.read_text()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if not SECRET_NAME.search(key) or value in (None, ""):
                continue
            value = str(value)
            references = re.findall(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", value)
            assert references, f"{name}.{key} is a literal: {value!r}"
            literal = re.sub(r"\$\{[^}]*\}", "", value)
            assert not re.search(r"://[^/@]*:[^/@$]+@", literal), f"{name}.{key} has a literal password"
            for var, op, default in references:
                if SECRET_NAME.search(var) and "API_KEY" not in var:
                    assert op == ":?", f"{name}.{key}: ${var} must be required (:?), not defaulted"
                assert not (op == ":-" and default and SECRET_NAME.search(var)), f"{var} has a default"
    for required in ("CREWFLOW_JWT_SECRET", "CREWFLOW_SECRET_KEY", "POSTGRES_PASSWORD", "REDIS_PASSWORD",
                     "MONGO_PASSWORD"):  # fmt: skip
        assert f"${{{required}:?" in text


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [t for v in node for t in _strings(v)]
    return []


def test_the_env_example_defines_every_variable_with_placeholders_only(compose):
    example = _env_example()
    referenced = {var for text in _strings(compose) for var in re.findall(r"\$\{(\w+)", text)}
    assert {"POSTGRES_PASSWORD", "CREWFLOW_JWT_SECRET"} <= referenced
    assert referenced <= set(example), f"not in .env.example: {sorted(referenced - set(example))}"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value in PLACEHOLDER, f"{key} in .env.example must be a placeholder, not {value!r}"
    assert (DEPLOY / ".gitignore").read_text().splitlines().count(".env") == 1, "deploy/.env is git-ignored"
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert "deploy/.env\n" not in tracked.stdout + "\n"


def test_the_application_reads_the_production_settings_compose_gives_it(compose):
    example = _env_example() | {"POSTGRES_PASSWORD": "pw1", "REDIS_PASSWORD": "pw2", "MONGO_PASSWORD": "pw3"}
    for name in CREWFLOW_SERVICES:
        raw = compose["services"][name]["environment"]
        env = {key: interpolate(str(value), example) for key, value in raw.items()}
        settings = Settings.from_env(env)
        assert settings.database_url == "postgresql+asyncpg://crewflow:pw1@postgres:5432/crewflow", name
        assert settings.redis_url == "redis://:pw2@redis:6379/0"
        assert settings.mongodb_url is not None and settings.mongodb_url.startswith("mongodb://crewflow:pw3@mongodb:")
        assert env["CREWFLOW_JWT_SECRET"] == example["CREWFLOW_JWT_SECRET"]
    assert interpolate("${DOCKER_HOST_X:-tcp://sandbox:2375}", {}) == "tcp://sandbox:2375"
    with pytest.raises(AssertionError, match="required"):
        interpolate("${NOPE:?required}", {})


def test_compose_runs_the_crewflow_commands_the_cli_knows(compose):
    parser = build_parser()
    commands = {name: compose["services"][name]["command"] for name in CREWFLOW_SERVICES}
    assert commands["migrate"] == ["migrate"]
    assert commands["worker"][0] == "worker"
    for name, words in commands.items():
        try:
            args = parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{name}: `crewflow {shlex.join(words)}` is not a command the CLI knows")
        assert args.command == words[0]
    check = compose["services"]["worker"]["healthcheck"]["test"]
    assert check[:3] == ["CMD", "crewflow", "worker"], "the worker's health is crewflow's own worker check"
    args = parser.parse_args(check[2:])
    assert (args.command, args.action) == ("worker", "check")


def test_the_sandbox_engine_is_private_to_the_api_and_worker_and_documents_sysbox(compose):
    services = compose["services"]
    sandbox = services["sandbox"]
    assert "# runtime: sysbox-runc" in COMPOSE.read_text(), "the Sysbox runtime line is there to uncomment"
    for name in ("api", "worker"):  # tool nodes and builds run in the worker, a tool's test run in the API
        assert "sandbox" in services[name]["networks"]
        assert services[name]["environment"]["DOCKER_HOST"] == "tcp://sandbox:2375"
    for name, service in services.items():
        if name not in {"sandbox", "worker", "api"}:
            assert "sandbox" not in service.get("networks", []), f"{name} must not reach the sandbox engine"
    assert "ports" not in sandbox
    assert compose["networks"]["sandbox"].get("internal") is True
    assert compose["networks"]["data"].get("internal") is True
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["api"], "only the API is published on the host"


def _compose_command() -> list[str] | None:
    """Compose v2: the docker CLI plugin, or the standalone ``docker-compose`` binary of the same code."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, check=False)
        if probe.returncode == 0 and re.search(r"version v?2\.", probe.stdout):
            return command
    return None


def test_docker_compose_config_accepts_the_file_and_refuses_a_missing_secret(tmp_path):
    command = _compose_command()
    if command is None:
        pytest.skip("Docker Compose v2 is not installed")
    values = {k: v or "x" for k, v in _env_example().items()}
    env = tmp_path / ".env"
    env.write_text("\n".join(f"{k}={v}" for k, v in values.items()) + "\n")
    run = [*command, "-f", str(COMPOSE), "--env-file", str(env), "config", "--quiet"]
    result = subprocess.run(run, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    env.write_text("\n".join(f"{k}={v}" for k, v in values.items() if k != "CREWFLOW_JWT_SECRET") + "\n")
    result = subprocess.run(run, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "set CREWFLOW_JWT_SECRET in deploy/.env" in result.stderr
