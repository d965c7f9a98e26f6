"""docker/: the Dockerfile, the compose file and the Kubernetes manifests (the
KubeRay RayJob, the MLflow server) agree with pyproject.toml, with the CLIs they
call (`ray start`, `mlflow server`, `python -m jobs.run`) and with each other,
and they keep the cluster closed: Ray's token on every Ray process, a
NetworkPolicy in front of the head, MLflow behind its basic-auth app, and no
password or token written in any of them. There is no Docker engine nor
Kubernetes here, so the files are parsed, not run. Each check returns its
problems as strings, so that the test_*_reject_broken_copies tests can show the
same checks fail on a copy with a deliberate mistake."""

from __future__ import annotations

import configparser
import copy
import fnmatch
import functools
import json
import re
import shlex
import stat
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from pipeline.submit import has_uri_password, secret_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
RAYJOB = DOCKER / "rayjob.yaml"
MLFLOW_K8S = DOCKER / "mlflow.yaml"
MAKE_SECRETS = DOCKER / "make-secrets.sh"
LOOPBACK = "127.0.0.1"
# Where Compose mounts a secret named without an absolute target.
RUN_SECRETS = PurePosixPath("/run/secrets")
# The key of a KubeRay auth Secret (authOptions.secretName) that holds the token.
RAY_TOKEN_KEY = "auth_token"


# ---------------------------------------------------------------------------
# Parsing helpers


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def project_requirements() -> list[Requirement]:
    project = pyproject()
    extras = project.get("optional-dependencies", {}).values()
    return [Requirement(r) for r in [*project["dependencies"], *(r for e in extras for r in e)]]


def ray_pin() -> str:
    (ray,) = [Requirement(r) for r in pyproject()["dependencies"] if Requirement(r).name == "ray"]
    (spec,) = ray.specifier
    assert spec.operator == "==", f"ray must be pinned exactly, not {ray.specifier}"
    return spec.version


@functools.cache
def cli_flags(*command: str) -> frozenset[str]:
    """The option names `command --help` lists (click's format: an option line
    is indented at most 4 spaces and starts with '-'; its names come before the
    column gap)."""
    exe = Path(sys.executable).with_name(command[0])
    out = subprocess.run(
        [str(exe), *command[1:], "--help"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    flags = set()
    for line in out.splitlines():
        if re.match(r"^ {1,4}-", line):
            names = re.split(r"\s{2,}", line.strip())[0]
            flags.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", names))
    assert "--help" in flags, f"no options parsed from {command} --help"
    return frozenset(flags)


def shell_words(command: str | list[str]) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def flags_used(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("-")]


def flag_value(words: list[str], flag: str) -> str | None:
    """`--flag=value` or `--flag value`; None when absent."""
    for i, word in enumerate(words):
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
        if word == flag and i + 1 < len(words) and not words[i + 1].startswith("-"):
            return words[i + 1]
    return None


def image_name_tag(image: str) -> tuple[str, str]:
    """("vggpipe", "0.1.0") for registry.example.com/vggpipe:0.1.0."""
    path, _, tag = image.rpartition(":")
    if "/" in tag or not path:  # no tag, only a registry port
        path, tag = image, "latest"
    return path.rsplit("/", 1)[-1], tag


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    return instructions


def shell_commands(script: str) -> list[list[str]]:
    """A RUN line's simple commands, split at && || ; and |."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def pip_install_args(words: list[str]) -> list[str] | None:
    """The arguments of `pip install` (also `python -m pip install`), else None."""
    for i, word in enumerate(words[:-1]):
        if PurePosixPath(word).name in ("pip", "pip3") and words[i + 1] == "install":
            return words[i + 2 :]
    return None


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [p.strip().strip("/") for p in lines if p.strip() and not p.lstrip().startswith("#")]


def dockerignored(path: str, patterns: list[str]) -> bool:
    path = path.strip("/").removeprefix("./")
    ignored = False
    for pattern in patterns:  # later patterns win; "!" re-includes
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/")):
            ignored = not negate
    return ignored


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def rayjob_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYJOB.read_text()) if d]


def mlflow_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(MLFLOW_K8S.read_text()) if d]


def ray_job(documents: list[dict]) -> dict:
    (job,) = [d for d in documents if d.get("kind") == "RayJob"]
    return job


def of_kind(documents: list[dict], kind: str) -> list[dict]:
    return [d for d in documents if d.get("kind") == kind]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: str(v) for k, v in env.items()}


def services_running(services: dict, *prefix: str) -> dict[str, list[str]]:
    """{service: command words} for the services whose command starts with prefix."""
    found = {}
    for name, service in services.items():
        words = shell_words(service.get("command") or [])
        if words[: len(prefix)] == list(prefix):
            found[name] = words
    return found


def volume_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) of a compose service's volumes."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append(
                (volume.get("source", ""), volume["target"], bool(volume.get("read_only")))
            )
        else:
            # ${VAR:-default} holds a colon of its own
            source, target, *mode = re.sub(r"\$\{[^}]*\}", "$VAR", volume).split(":")
            mounts.append((source, target, "ro" in "".join(mode).split(",")))
    return mounts


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~", "$"))


def secret_mounts(service: dict) -> dict[str, str]:
    """{path in the container: secret name} of a compose service's secrets."""
    mounts = {}
    for entry in service.get("secrets") or []:
        entry = {"source": entry} if isinstance(entry, str) else entry
        target = PurePosixPath(entry.get("target") or entry["source"])
        mounts[str(target if target.is_absolute() else RUN_SECRETS / target)] = entry["source"]
    return mounts


def files_read_into(script: str) -> dict[str, str]:
    """{VARIABLE: path} for each `VARIABLE=$(cat path)` of a shell script (`$$`
    is Compose's escape for `$`)."""
    found = re.findall(r"\b([A-Z_][A-Z0-9_]*)=\$\$?\(cat\s+([^\s)]+)\)", script)
    return dict(found)


def pod_specs(job: dict) -> dict[str, dict]:
    """{"head": pod spec, "worker <group>": pod spec} of a RayJob's cluster."""
    cluster = job["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster.get("workerGroupSpecs", []):
        specs[f"worker {group['groupName']}"] = group["template"]["spec"]
    return specs


def pod_labels(job: dict) -> dict[str, dict[str, str]]:
    """{"head" / "worker <group>" / "submitter": pod template labels} of a RayJob."""
    cluster = job["spec"]["rayClusterSpec"]
    labels = {"head": cluster["headGroupSpec"]["template"].get("metadata", {}).get("labels", {})}
    for group in cluster.get("workerGroupSpecs", []):
        template = group["template"]
        labels[f"worker {group['groupName']}"] = template.get("metadata", {}).get("labels", {})
    submitter = job["spec"].get("submitterPodTemplate") or {}
    labels["submitter"] = submitter.get("metadata", {}).get("labels", {})
    return labels


def env_entries(container: dict) -> dict[str, dict]:
    """{name: env entry} of a Kubernetes container."""
    return {entry["name"]: entry for entry in container.get("env") or []}


def secret_ref(entry: dict | None) -> tuple[str, str] | None:
    """(Secret name, key) an env entry takes its value from, else None."""
    ref = ((entry or {}).get("valueFrom") or {}).get("secretKeyRef")
    return (ref.get("name"), ref.get("key")) if ref else None


def matches(selector: dict, labels: dict[str, str]) -> bool:
    """Whether a label selector with matchLabels only selects these labels."""
    wanted = selector.get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def pod_mounts(spec: dict) -> dict[str, tuple[dict, dict]]:
    """{mountPath: (volumeMount, volume)} over a pod's containers."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {
        m["mountPath"]: (m, volumes.get(m["name"], {}))
        for c in spec["containers"]
        for m in c.get("volumeMounts", [])
    }


def under(path: str, folder: str) -> bool:
    return PurePosixPath(folder) in [PurePosixPath(path), *PurePosixPath(path).parents]


def entrypoint_words(job: dict) -> list[str]:
    return shlex.split(job["spec"]["entrypoint"])


# ---------------------------------------------------------------------------
# Checks: each returns its problems


def base_image_problems(dockerfile_text: str) -> list[str]:
    froms = [
        args.split()[0] for kw, args in dockerfile_instructions(dockerfile_text) if kw == "FROM"
    ]
    if not froms:
        return ["no FROM"]
    problems = []
    requires_python = SpecifierSet(pyproject()["requires-python"])
    for image in froms:
        repository, _, tag = image.partition(":")
        match = re.fullmatch(r"(?P<ray>[\d.]+)-py(?P<major>3)(?P<minor>\d+)(-\w+)*", tag)
        if repository != "rayproject/ray" or not match:
            problems.append(f"FROM {image}: not rayproject/ray:<ray>-py3<minor>-...")
            continue
        if match["ray"] != ray_pin():
            problems.append(f"FROM {image}: Ray {match['ray']}, pyproject pins {ray_pin()}")
        python = f"{match['major']}.{match['minor']}"
        if python not in requires_python:
            problems.append(
                f"FROM {image}: Python {python} outside requires-python {requires_python}"
            )
    return problems


def pip_install_problems(dockerfile_text: str) -> list[str]:
    """pip installs the project with its extras, or a dependency of it (for an
    extra of that package) at pyproject's pin."""
    extras = set(pyproject().get("optional-dependencies", {}))
    known = {canonicalize_name(r.name): r.specifier for r in project_requirements()}
    takes_value = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i"}
    takes_value |= {"--index-url", "--extra-index-url", "-f", "--find-links", "-t", "--target"}
    problems, installs = [], 0
    for keyword, args in dockerfile_instructions(dockerfile_text):
        if keyword != "RUN":
            continue
        for words in shell_commands(args):
            pip_args = pip_install_args(words)
            if pip_args is None:
                continue
            installs += 1
            words_left = iter(pip_args)
            for word in words_left:
                if word.startswith("-"):
                    if word.split("=")[0] in ("-r", "--requirement", "-e", "--editable"):
                        problems.append(
                            f"pip install {word}: the image installs the project itself"
                        )
                    if word in takes_value:
                        next(words_left, None)
                    continue
                if word == "." or word.startswith(".["):
                    wanted = set(filter(None, word[1:].strip("[]").split(",")))
                    problems += [f"pip install {word}: no extra {e!r}" for e in wanted - extras]
                elif canonicalize_name(Requirement(word).name) not in known:
                    problems.append(f"pip install {word}: not a dependency in pyproject.toml")
                elif (
                    Requirement(word).specifier != known[canonicalize_name(Requirement(word).name)]
                ):
                    problems.append(f"pip install {word}: not the version pyproject.toml pins")
    return problems if installs else ["no pip install"]


def copy_problems(dockerfile_text: str) -> list[str]:
    """COPY sources exist and are not dropped by .dockerignore; the final
    WORKDIR holds jobs/ (so `python -m jobs.run` runs from there)."""
    patterns, problems = dockerignore_patterns(), []
    workdir, copied = PurePosixPath("/"), {}
    for keyword, args in dockerfile_instructions(dockerfile_text):
        if keyword == "WORKDIR":
            workdir = workdir / args
        elif keyword in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            *sources, dest = [w for w in words if not w.startswith("--")]
            for source in sources:
                if not (ROOT / source).exists():
                    problems.append(f"{keyword} {source}: no such path in the repository")
                elif dockerignored(source, patterns):
                    problems.append(f"{keyword} {source}: excluded by .dockerignore")
                copied[source.strip("/")] = workdir / dest
    if copied.get("jobs") != workdir / "jobs":
        problems.append(f"jobs/ is not copied to WORKDIR/jobs ({workdir}/jobs)")
    return problems


def published_port_problems(services: dict) -> list[str]:
    problems = []
    for name, service in services.items():
        if service.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port on every interface")
        for port in service.get("ports") or []:
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).rsplit(":", 2)
                host_ip = parts[0] if len(parts) == 3 else None
            if host_ip != LOOPBACK:
                problems.append(f"{name}: port {port!r} is not bound to {LOOPBACK}")
    return problems


def container_ports(service: dict) -> set[str]:
    ports = set()
    for port in service.get("ports") or []:
        target = port["target"] if isinstance(port, dict) else str(port).rsplit(":", 1)[-1]
        ports.add(str(target).split("/")[0])
    return ports


def ray_service_problems(services: dict) -> list[str]:
    problems = []
    ray = services_running(services, "ray", "start")
    heads = [name for name, words in ray.items() if "--head" in words]
    if len(heads) != 1 or len(ray) < 2:
        return [f"want one ray head and at least one worker, got {sorted(ray)}"]
    (head,) = heads
    mlflow = services_running(services, "mlflow", "server")
    for name, words in ray.items():
        unknown = set(flags_used(words)) - cli_flags("ray", "start")
        problems += [f"{name}: `ray start` has no option {f}" for f in sorted(unknown)]
        if "--block" not in words:
            problems.append(f"{name}: `ray start` without --block exits and stops the container")
        if "shm_size" not in services[name]:
            problems.append(f"{name}: no shm_size for Ray's object store")
        uri = urlsplit(environment(services[name]).get("MLFLOW_TRACKING_URI", ""))
        if (uri.hostname, str(uri.port)) not in {
            (m, flag_value(w, "--port") or "5000") for m, w in mlflow.items()
        }:
            problems.append(f"{name}: MLFLOW_TRACKING_URI {uri.geturl()!r} is no mlflow service")
        if name != head:
            address = flag_value(words, "--address") or ""
            gcs_port = flag_value(ray[head], "--port") or "6379"
            if address != f"{head}:{gcs_port}":
                problems.append(f"{name}: --address {address!r}, the head is {head}:{gcs_port}")
            devices = services[name].get("deploy", {}).get("resources", {})
            devices = devices.get("reservations", {}).get("devices", [])
            if not any(d.get("driver") == "nvidia" for d in devices):
                problems.append(f"{name}: no nvidia GPU reservation")
    dashboard = flag_value(ray[head], "--dashboard-port") or "8265"
    if dashboard not in container_ports(services[head]):
        problems.append(f"{head}: dashboard port {dashboard} is not published")
    if flag_value(ray[head], "--dashboard-host") != "0.0.0.0":
        problems.append(f"{head}: the dashboard listens on localhost only, unreachable via ports")
    return problems


def mlflow_service_problems(services: dict) -> list[str]:
    """The MLflow server runs its basic-auth app, keeps its users on a volume,
    and takes every password from a secret: PostgreSQL's from the same secret
    the database is initialised with."""
    mlflow = services_running(services, "mlflow", "server")
    if len(mlflow) != 1:
        return [f"want one mlflow server service, got {sorted(mlflow)}"]
    ((name, words),) = mlflow.items()
    service = services[name]
    unknown = set(flags_used(words)) - cli_flags("mlflow", "server")
    problems = [f"{name}: `mlflow server` has no option {f}" for f in sorted(unknown)]
    if (flag_value(words, "--port") or "5000") not in container_ports(service):
        problems.append(f"{name}: its --port is not the published container port")
    if flag_value(words, "--app-name") != "basic-auth":
        problems.append(f"{name}: not started with --app-name basic-auth: no login is asked")
    # What the entrypoint reads into the environment, from which mounted secret.
    mounted = secret_mounts(service)
    read = files_read_into(" ".join(shell_words(service.get("entrypoint") or [])))
    from_secret = {var: mounted.get(path) for var, path in read.items()}
    env = environment(service)
    for variable in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        if not from_secret.get(variable):
            problems.append(f"{name}: {variable} is not read from a mounted secret")
    if not env.get("MLFLOW_AUTH_ADMIN_USERNAME"):
        problems.append(f"{name}: no MLFLOW_AUTH_ADMIN_USERNAME for the admin user")
    # The basic-auth app's users live in ./basic_auth.db: the working directory.
    workdir = service.get("working_dir", "")
    if not any(is_named_volume(s) and t == workdir for s, t, _ in volume_mounts(service)):
        problems.append(f"{name}: working directory {workdir!r} (basic_auth.db) is no volume")
    postgres = {n: s for n, s in services.items() if s.get("image", "").startswith("postgres:")}
    if len(postgres) != 1:
        return [*problems, f"want one postgres:<version> service, got {sorted(postgres)}"]
    ((db_name, db),) = postgres.items()
    uri = urlsplit(flag_value(words, "--backend-store-uri") or "")
    db_env = environment(db)
    if uri.scheme != "postgresql":
        problems.append(f"{name}: backend store {uri.geturl()!r} is not postgresql://")
    got = (uri.username, uri.hostname, uri.port, uri.path.lstrip("/"))
    want = (db_env.get("POSTGRES_USER"), db_name, 5432, db_env.get("POSTGRES_DB"))
    if got != want:
        problems.append(f"{name}: backend store (user, host, port, db) {got} != {want}")
    db_secret = secret_mounts(db).get(db_env.get("POSTGRES_PASSWORD_FILE", ""))
    if not db_secret:
        problems.append(f"{db_name}: POSTGRES_PASSWORD_FILE is not a mounted secret")
    elif from_secret.get("PGPASSWORD") != db_secret:
        problems.append(f"{name}: PGPASSWORD is not read from {db_name}'s secret {db_secret}")
    test = shell_words(db.get("healthcheck", {}).get("test", []))
    if not any("pg_isready" in word for word in test):
        problems.append(f"{db_name}: no pg_isready healthcheck")
    condition = service.get("depends_on", {}).get(db_name, {}).get("condition")
    if condition != "service_healthy":
        problems.append(f"{name}: does not wait for {db_name} to be healthy")
    return problems


def compose_ray_auth_problems(services: dict) -> list[str]:
    """Every Ray node demands and sends Ray's token, read from a mounted secret,
    and logs to MLflow with the login in a mounted credentials file."""
    problems = []
    for name in services_running(services, "ray", "start"):
        env, mounted = environment(services[name]), secret_mounts(services[name])
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{name}: RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE')!r}, not token")
        if env.get("RAY_AUTH_TOKEN_PATH") not in mounted:
            problems.append(f"{name}: RAY_AUTH_TOKEN_PATH is not a mounted secret")
        if "RAY_AUTH_TOKEN" in env:
            problems.append(f"{name}: RAY_AUTH_TOKEN set here, not read from a secret")
        if "/home/ray/.mlflow/credentials" not in mounted:
            problems.append(f"{name}: no MLflow login at ~/.mlflow/credentials")
    return problems


def compose_secret_problems(document: dict, made: Path) -> list[str]:
    """Each secret a service mounts is declared from a file in docker/secrets/,
    and docker/make-secrets.sh (run into `made`) writes each of those files,
    readable by the containers, in a folder only its owner enters; the Ray
    nodes' MLflow login is the admin's."""
    declared = document.get("secrets") or {}
    problems = []
    for name, service in document["services"].items():
        for secret in secret_mounts(service).values():
            if secret not in declared:
                problems.append(f"{name}: secret {secret!r} is not declared")
    for secret, source in declared.items():
        path = PurePosixPath(source.get("file", ""))
        if path.parent != PurePosixPath("secrets"):
            problems.append(f"secret {secret}: {source} is not a file in docker/secrets/")
        elif not (made / path.name).is_file():
            problems.append(f"secret {secret}: make-secrets.sh writes no {path.name}")
        elif not (made / path.name).stat().st_mode & stat.S_IROTH:
            problems.append(f"secret {secret}: {path.name} is unreadable to the containers' users")
    if stat.S_IMODE(made.stat().st_mode) != 0o700:
        problems.append(f"make-secrets.sh leaves its folder {oct(made.stat().st_mode)}, not 0700")
    login = configparser.ConfigParser()
    login.read(made / "mlflow_credentials")
    ((mlflow, _),) = services_running(document["services"], "mlflow", "server").items()
    admin = (
        environment(document["services"][mlflow]).get("MLFLOW_AUTH_ADMIN_USERNAME"),
        (made / "mlflow_admin_password").read_text(),
    )
    section = login["mlflow"] if login.has_section("mlflow") else {}
    user = (section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password"))
    if user != admin:
        problems.append("mlflow_credentials is not the MLflow admin's login")
    return problems


def compose_path_problems(document: dict) -> list[str]:
    problems, declared = [], set(document.get("volumes") or {})
    for name, service in document["services"].items():
        build = service.get("build")
        if build is not None:
            build = {"context": build} if isinstance(build, str) else build
            context = (COMPOSE.parent / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if dockerfile != DOCKERFILE.resolve():
                problems.append(f"{name}: builds {dockerfile}, not {DOCKERFILE}")
            if not (context / "pyproject.toml").is_file():
                problems.append(f"{name}: build context {context} is not the repository root")
        for source, target, _ in volume_mounts(service):
            if is_named_volume(source) and source not in declared:
                problems.append(f"{name}: volume {source!r} (at {target}) is not declared")
    return problems


def shared_mount_problems(services: dict) -> list[str]:
    """Head and workers mount one named volume at one path, and ImageNet read-only."""
    ray = services_running(services, "ray", "start")
    mounts = {name: volume_mounts(services[name]) for name in ray}
    shared = set.intersection(
        *({(s, t) for s, t, ro in m if is_named_volume(s) and not ro} for m in mounts.values())
    )
    problems = [] if shared else [f"no named volume mounted at one path on all of {sorted(ray)}"]
    for name, service_mounts in mounts.items():
        if not any(t.startswith("/data") and ro for _, t, ro in service_mounts):
            problems.append(f"{name}: no read-only ImageNet mount under /data")
    return problems


def rayjob_problems(documents: list[dict]) -> list[str]:
    job = ray_job(documents)
    problems = []
    if job.get("apiVersion") != "ray.io/v1":
        problems.append(f"apiVersion {job.get('apiVersion')!r}, KubeRay's is ray.io/v1")
    spec = job["spec"]
    if str(spec["rayClusterSpec"].get("rayVersion")) != ray_pin():
        problems.append(f"rayVersion {spec['rayClusterSpec'].get('rayVersion')!r} != {ray_pin()}")
    if spec.get("shutdownAfterJobFinishes") is not True:
        problems.append("the cluster outlives the job (shutdownAfterJobFinishes)")
    pods = pod_specs(job)
    workers = {k: v for k, v in pods.items() if k != "head"}
    if not workers:
        problems.append("no worker group")
    gpus = 0
    for group in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        per_pod = sum(
            int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            for c in group["template"]["spec"]["containers"]
        )
        if per_pod < 1:
            problems.append(f"worker {group['groupName']}: no nvidia.com/gpu limit")
        gpus += per_pod * int(group.get("replicas", 1))
    words = entrypoint_words(job)
    train_sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--train-set"]
    workers_wanted = [int(s.split("=")[1]) for s in train_sets if s.startswith("num_workers=")]
    if workers_wanted and workers_wanted[-1] > gpus:
        problems.append(f"num_workers={workers_wanted[-1]} but the workers have {gpus} GPUs")
    work_dir, data = flag_value(words, "--work-dir"), flag_value(words, "--data")
    claims = {d["metadata"]["name"]: d for d in documents if d["kind"] == "PersistentVolumeClaim"}
    for pod, pod_spec in pods.items():
        mounts = pod_mounts(pod_spec)
        shared = [
            path
            for path, (m, v) in mounts.items()
            if work_dir and under(work_dir, path) and not m.get("readOnly")
        ]
        if not shared:
            problems.append(f"{pod}: --work-dir {work_dir} is on no writable mount")
        for path in shared:
            claim = mounts[path][1].get("persistentVolumeClaim", {}).get("claimName")
            modes = claims.get(claim, {}).get("spec", {}).get("accessModes", [])
            if "ReadWriteMany" not in modes:
                problems.append(f"{pod}: {path} is not a ReadWriteMany claim of this file")
        if not any(data and under(data, p) and m.get("readOnly") for p, (m, _) in mounts.items()):
            problems.append(f"{pod}: --data {data} is on no read-only mount")
        shm = mounts.get("/dev/shm", ({}, {}))[1].get("emptyDir", {})
        if shm.get("medium") != "Memory":
            problems.append(f"{pod}: /dev/shm is not an in-memory emptyDir")
    same = {
        (path, v.get("persistentVolumeClaim", {}).get("claimName"))
        for path, (_, v) in pod_mounts(pods["head"]).items()
        if work_dir and under(work_dir, path)
    }
    for pod, pod_spec in workers.items():
        theirs = {
            (path, v.get("persistentVolumeClaim", {}).get("claimName"))
            for path, (_, v) in pod_mounts(pod_spec).items()
            if work_dir and under(work_dir, path)
        }
        if theirs != same:
            problems.append(f"{pod}: shared volume {theirs} differs from the head's {same}")
    return problems


def rayjob_auth_problems(documents: list[dict]) -> list[str]:
    """Token auth on the RayJob's cluster: KubeRay's authOptions name the Secret,
    and every Ray container (head, workers, the submitter) runs with
    RAY_AUTH_MODE=token and the token from that Secret; the head and workers
    have the MLflow login from a Secret."""
    job = ray_job(documents)
    spec = job["spec"]
    auth = spec["rayClusterSpec"].get("authOptions") or {}
    problems = []
    if auth.get("mode") != "token" or not auth.get("secretName"):
        problems.append(f"authOptions {auth}: not mode token with a secretName")
    pods = pod_specs(job)
    submitter = spec.get("submitterPodTemplate")
    if not submitter:
        problems.append("no submitterPodTemplate: the submitter gets no token of ours")
    else:
        pods["submitter"] = submitter["spec"]
    for pod, pod_spec in pods.items():
        env = env_entries(pod_spec["containers"][0])  # KubeRay's Ray container
        if env.get("RAY_AUTH_MODE", {}).get("value") != "token":
            problems.append(f"{pod}: RAY_AUTH_MODE is not token")
        if secret_ref(env.get("RAY_AUTH_TOKEN")) != (auth.get("secretName"), RAY_TOKEN_KEY):
            problems.append(
                f"{pod}: RAY_AUTH_TOKEN is not {RAY_TOKEN_KEY} of Secret {auth.get('secretName')}"
            )
        if pod != "submitter":
            for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                if not secret_ref(env.get(variable)):
                    problems.append(f"{pod}: {variable} is not from a Secret")
    return problems


def network_policy_problems(documents: list[dict]) -> list[str]:
    """One NetworkPolicy selects the head (and no other pod of the job) and lets
    in only pods labelled with the job's name, or KubeRay's operator on the
    dashboard port."""
    job = ray_job(documents)
    name, labels = job["metadata"]["name"], pod_labels(job)
    head_ports = {
        p.get("name"): p["containerPort"]
        for p in pod_specs(job)["head"]["containers"][0].get("ports", [])
    }
    dashboard = head_ports.get("dashboard", 8265)
    policies = [
        p
        for p in of_kind(documents, "NetworkPolicy")
        if matches(p["spec"].get("podSelector", {}), labels["head"])
    ]
    if len(policies) != 1:
        return [f"want one NetworkPolicy selecting the head, got {len(policies)}"]
    (policy,) = policies
    spec, problems = policy["spec"], []
    for pod, theirs in labels.items():
        if pod != "head" and matches(spec["podSelector"], theirs):
            problems.append(f"the head's NetworkPolicy also selects the {pod}")
    if "Ingress" not in spec.get("policyTypes", ["Ingress"]):
        problems.append("the head's NetworkPolicy does not restrict ingress")
    for rule in spec.get("ingress") or []:
        if not rule.get("from"):
            problems.append(f"ingress rule {rule} admits every source")
            continue
        ports = {str(p.get("port")) for p in rule.get("ports") or []}
        for peer in rule["from"]:
            selector = peer.get("podSelector") or {}
            if "ipBlock" in peer or selector.get("matchExpressions"):
                problems.append(f"ingress peer {peer}: not a matchLabels pod selector")
            elif "namespaceSelector" in peer:
                operator = selector.get("matchLabels") == {
                    "app.kubernetes.io/name": "kuberay-operator"
                }
                if not operator or ports != {str(dashboard)}:
                    problems.append(f"ingress peer {peer} on {ports or 'every port'}")
            elif (selector.get("matchLabels") or {}).get("app.kubernetes.io/instance") != name:
                problems.append(f"ingress peer {peer}: not this job's pods ({name})")
            else:
                missing = [pod for pod, theirs in labels.items() if not matches(selector, theirs)]
                if missing:
                    problems.append(f"ingress peer {peer} leaves out the {', '.join(missing)}")
    return problems


def mlflow_k8s_problems(documents: list[dict], job_documents: list[dict]) -> list[str]:
    """The Kubernetes MLflow server runs its basic-auth app with every secret
    from a Secret, keeps its users on a volume, answers at the RayJob's
    MLFLOW_TRACKING_URI, and its admin is the login the Ray pods use."""
    servers = [
        (d, c)
        for d in of_kind(documents, "Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
        if shell_words(c.get("command") or [])[:2] == ["mlflow", "server"]
    ]
    if len(servers) != 1:
        return [f"want one Deployment running mlflow server, got {len(servers)}"]
    ((deployment, container),) = servers
    words = shell_words(container["command"]) + shell_words(container.get("args") or [])
    unknown = set(flags_used(words)) - cli_flags("mlflow", "server")
    problems = [f"mlflow.yaml: `mlflow server` has no option {f}" for f in sorted(unknown)]
    if flag_value(words, "--app-name") != "basic-auth":
        problems.append("mlflow.yaml: not started with --app-name basic-auth: no login is asked")
    env = env_entries(container)
    for variable in (
        "MLFLOW_BACKEND_STORE_URI",
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    ):
        if not secret_ref(env.get(variable)):
            problems.append(f"mlflow.yaml: {variable} is not from a Secret")
    if flag_value(words, "--backend-store-uri"):
        problems.append("mlflow.yaml: --backend-store-uri given, not MLFLOW_BACKEND_STORE_URI")
    pod = deployment["spec"]["template"]["spec"]
    workdir = pod_mounts(pod).get(container.get("workingDir", ""), ({}, {}))[1]
    if "persistentVolumeClaim" not in workdir:
        problems.append("mlflow.yaml: the working directory (basic_auth.db) is no volume claim")
    job_env = yaml.safe_load(ray_job(job_documents)["spec"]["runtimeEnvYAML"])["env_vars"]
    uri = urlsplit(job_env["MLFLOW_TRACKING_URI"])
    service, namespace = (uri.hostname.split(".") + [None])[:2]
    port = int(flag_value(words, "--port") or 5000)
    found = [
        s
        for s in of_kind(documents, "Service")
        if s["metadata"]["name"] == service
        and s["metadata"].get("namespace") == (namespace or s["metadata"].get("namespace"))
        and matches(
            {"matchLabels": s["spec"].get("selector")},
            deployment["spec"]["template"]["metadata"]["labels"],
        )
        and any(
            p["port"] == uri.port and p.get("targetPort", p["port"]) == port
            for p in s["spec"]["ports"]
        )
    ]
    if not found:
        problems.append(f"no Service of mlflow.yaml answers at {uri.geturl()} on --port {port}")
    login = {
        secret_ref(env.get("MLFLOW_AUTH_ADMIN_USERNAME")),
        secret_ref(env.get("MLFLOW_AUTH_ADMIN_PASSWORD")),
    }
    for pod_name, pod_spec in pod_specs(ray_job(job_documents)).items():
        theirs = env_entries(pod_spec["containers"][0])
        used = {
            secret_ref(theirs.get("MLFLOW_TRACKING_USERNAME")),
            secret_ref(theirs.get("MLFLOW_TRACKING_PASSWORD")),
        }
        if used != login:
            problems.append(f"{pod_name}: its MLflow login {used} is not the admin's {login}")
    return problems


# A `NAME=value` in a string (a compose `environment` list, a shell script);
# a value read with $(...) or ${...} is no literal.
ASSIGNMENT = re.compile(r"(?<![\w$])([A-Za-z_][A-Za-z0-9_]*)=(?![$\s])")


def literal_credential_problems(node, where: str) -> list[str]:
    """Passwords and tokens written as values anywhere in a parsed YAML file: a
    URI with a password; a variable named like a secret (pipeline.submit's rule:
    *PASSWORD*, *SECRET*, *TOKEN*, *_KEY) with a value, as a mapping key, a
    Kubernetes env entry or a NAME=value string; a Secret with its data."""
    problems = []
    if isinstance(node, dict):
        if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
            problems.append(f"{where}: a Secret's values are written here")
        name = node.get("name")
        if isinstance(name, str) and "value" in node and env_like(name) and secret_name(name):
            problems.append(f"{where}: env {name} has a literal value")
        for key, value in node.items():
            if isinstance(value, (str, int, float)) and env_like(str(key)) and secret_name(key):
                problems.append(f"{where}.{key}: a literal value")
            if key == "runtimeEnvYAML" and isinstance(value, str):
                problems += literal_credential_problems(yaml.safe_load(value), f"{where}.{key}")
            else:
                problems += literal_credential_problems(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            problems += literal_credential_problems(item, f"{where}[{index}]")
    elif isinstance(node, str):
        if has_uri_password(node):
            problems.append(f"{where}: a URI with a password")
        for name in ASSIGNMENT.findall(node):
            if env_like(name) and secret_name(name):
                problems.append(f"{where}: {name}= has a literal value")
    return problems


def env_like(name: str) -> bool:
    """An environment variable's name as written (MLFLOW_TRACKING_PASSWORD), not
    a Kubernetes field (secretName)."""
    return re.fullmatch(r"[A-Z][A-Z0-9_]*", name) is not None


def image_tag_problems(compose_document: dict, documents: list[dict]) -> list[str]:
    """Every image of this project (by name, whatever the registry) carries
    pyproject's version, and the compose build produces that image."""
    name, version = pyproject()["name"], pyproject()["version"]
    images = [s.get("image", "") for s in compose_document["services"].values()]
    job = ray_job(documents)
    pods = [*pod_specs(job).values(), job["spec"].get("submitterPodTemplate", {}).get("spec", {})]
    pods += [d["spec"]["template"]["spec"] for d in of_kind(documents, "Deployment")]
    for pod_spec in pods:
        images += [c["image"] for c in pod_spec.get("containers", [])]
    ours = [i for i in images if image_name_tag(i)[0] == name]
    problems = [f"{i}: not tagged {version}" for i in ours if image_name_tag(i)[1] != version]
    for service, spec in compose_document["services"].items():
        if "build" in spec and image_name_tag(spec.get("image", ""))[0] != name:
            problems.append(f"{service}: builds {spec.get('image')!r}, not a {name} image")
    if len(ours) < 7:  # head, worker, mlflow in compose; the RayJob's 3 pods; mlflow.yaml
        problems.append(f"only {ours} are {name} images")
    return problems


# ---------------------------------------------------------------------------
# Tests on the real files


def test_base_image_is_ray_at_the_pinned_version_and_python():
    assert base_image_problems(DOCKERFILE.read_text()) == []


def test_pip_installs_name_the_project_and_its_extras():
    assert pip_install_problems(DOCKERFILE.read_text()) == []
    assert "server" in pyproject()["optional-dependencies"]


def test_copies_exist_and_survive_dockerignore():
    assert copy_problems(DOCKERFILE.read_text()) == []
    patterns = dockerignore_patterns()
    for big in (".git", ".venv", "mlruns", "mlflow.db", "demo-data", "runs"):
        assert dockerignored(big, patterns), f"{big} goes into the build context"


def test_compose_publishes_ports_on_loopback_only():
    assert published_port_problems(compose()["services"]) == []


def test_compose_ray_services():
    assert ray_service_problems(compose()["services"]) == []


def test_compose_mlflow_and_postgres():
    assert mlflow_service_problems(compose()["services"]) == []


def test_compose_ray_nodes_use_the_token_and_an_mlflow_login():
    assert compose_ray_auth_problems(compose()["services"]) == []


def test_compose_secrets_are_the_files_make_secrets_writes(tmp_path):
    folder = tmp_path / "secrets"
    subprocess.run(["bash", str(MAKE_SECRETS), str(folder)], check=True, capture_output=True)
    first = {f.name: f.read_text() for f in folder.iterdir()}
    (folder / "ray_auth_token").unlink()

    subprocess.run(["bash", str(MAKE_SECRETS), str(folder)], check=True, capture_output=True)

    assert compose_secret_problems(compose(), folder) == []
    again = {f.name: f.read_text() for f in folder.iterdir()}
    assert again.keys() == first.keys()
    # Kept, except the one deleted, which is new; all random and distinct.
    assert {k: v for k, v in again.items() if k != "ray_auth_token"} == {
        k: v for k, v in first.items() if k != "ray_auth_token"
    }
    assert again["ray_auth_token"] != first["ray_auth_token"]
    assert len(set(again.values())) == len(again) and len(again["ray_auth_token"]) == 64
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "docker/secrets/ray_auth_token"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "docker/secrets/ is not ignored by git"


def test_compose_paths_and_volumes():
    assert compose_path_problems(compose()) == []
    assert shared_mount_problems(compose()["services"]) == []


def test_rayjob_cluster():
    assert rayjob_problems(rayjob_documents()) == []


def test_rayjob_entrypoint_runs_the_workflow():
    from pipeline.cli import build_parser
    from pipeline.config import apply_overrides
    from pipeline.recipes import RECIPES

    words = entrypoint_words(ray_job(rayjob_documents()))
    assert words[:3] == ["python", "-m", "jobs.run"]
    assert (ROOT / "jobs" / "run.py").is_file()
    build_parser().parse_args(["run", *words[3:]])  # SystemExit on an unknown option
    # --train-set applies to every net's TrainConfig: it must name real fields
    # with values that validate on the paper's recipe.
    train_sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--train-set"]
    paper = next(name for name in RECIPES if name.startswith("paper-"))
    apply_overrides(RECIPES[paper](), train_sets)


def test_rayjob_mlflow_matches_compose_service():
    job = ray_job(rayjob_documents())
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    uri = urlsplit(env["MLFLOW_TRACKING_URI"])
    ((name, words),) = services_running(compose()["services"], "mlflow", "server").items()
    assert uri.hostname.split(".")[0] == name
    assert str(uri.port) == (flag_value(words, "--port") or "5000")


def test_rayjob_ray_pods_use_the_token_and_an_mlflow_login():
    assert rayjob_auth_problems(rayjob_documents()) == []


def test_rayjob_head_is_reached_only_by_the_clusters_pods():
    assert network_policy_problems(rayjob_documents()) == []


def test_kubernetes_mlflow_asks_for_the_login_the_ray_pods_have():
    assert mlflow_k8s_problems(mlflow_documents(), rayjob_documents()) == []


def test_no_password_or_token_is_written_in_any_yaml():
    files = {COMPOSE: [compose()], RAYJOB: rayjob_documents(), MLFLOW_K8S: mlflow_documents()}
    for path, documents in files.items():
        assert literal_credential_problems(documents, path.name) == []


def test_project_images_are_tagged_with_the_project_version():
    assert image_tag_problems(compose(), rayjob_documents() + mlflow_documents()) == []


# ---------------------------------------------------------------------------
# The same checks on copies with one deliberate mistake each


def test_checks_reject_broken_copies():
    dockerfile = DOCKERFILE.read_text()
    assert base_image_problems(dockerfile.replace(ray_pin(), "2.0.0", 1))
    assert base_image_problems(re.sub(r"-py3\d+", "-py310", dockerfile, count=1))
    assert pip_install_problems(dockerfile.replace('".[server]"', '".[nosuchextra]"'))
    assert pip_install_problems(dockerfile + "RUN pip install requests\n")
    assert copy_problems(dockerfile + "COPY no-such-dir ./x\n")

    def broken(edit) -> dict:
        document = copy.deepcopy(compose())
        edit(document["services"])
        return document

    def ray_nodes(services):
        return services_running(services, "ray", "start")

    def ray_head(services):
        return next(name for name, words in ray_nodes(services).items() if "--head" in words)

    def unbind(services):
        services[ray_head(services)]["ports"] = ["8265:8265"]

    def all_interfaces(services):
        services[ray_head(services)]["ports"] = ["0.0.0.0:8265:8265"]

    def bad_ray_flag(services):
        name = ray_head(services)
        services[name]["command"] = [*shell_words(services[name]["command"]), "--no-such-flag"]

    def bad_mlflow_flag(services):
        name = next(iter(services_running(services, "mlflow", "server")))
        services[name]["command"] = [*shell_words(services[name]["command"]), "--no-such-flag"]

    def database_password_elsewhere(services):
        db = next(s for s in services.values() if s.get("image", "").startswith("postgres:"))
        db["secrets"] = ["other_password"]
        db["environment"] = {
            **environment(db),
            "POSTGRES_PASSWORD_FILE": "/run/secrets/other_password",
        }

    def wrong_tracking_uri(services):
        for name in ray_nodes(services):
            services[name]["environment"] = {"MLFLOW_TRACKING_URI": "http://localhost:5000"}

    def undeclared_volume(services):
        services[ray_head(services)]["volumes"] = ["nosuchvolume:/shared"]

    def worker_shares_elsewhere(services):
        for name in set(ray_nodes(services)) - {ray_head(services)}:
            services[name]["volumes"] = ["shared:/elsewhere"]

    assert published_port_problems(broken(unbind)["services"])
    assert published_port_problems(broken(all_interfaces)["services"])
    assert ray_service_problems(broken(bad_ray_flag)["services"])
    assert ray_service_problems(broken(wrong_tracking_uri)["services"])
    assert mlflow_service_problems(broken(bad_mlflow_flag)["services"])
    assert mlflow_service_problems(broken(database_password_elsewhere)["services"])
    assert compose_path_problems(broken(undeclared_volume))
    assert shared_mount_problems(broken(worker_shares_elsewhere)["services"])

    def broken_job(edit) -> list[dict]:
        documents = copy.deepcopy(rayjob_documents())
        edit(ray_job(documents)["spec"])
        return documents

    def old_ray(spec):
        spec["rayClusterSpec"]["rayVersion"] = "2.0.0"

    def no_gpus(spec):
        for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                container["resources"]["limits"].pop("nvidia.com/gpu")

    def work_dir_off_the_shared_volume(spec):
        spec["entrypoint"] = spec["entrypoint"].replace("/shared/", "/tmp/")

    def worker_mounts_elsewhere(spec):
        for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
            for container in group["template"]["spec"]["containers"]:
                for mount in container["volumeMounts"]:
                    if mount["mountPath"] == "/shared":
                        mount["mountPath"] = "/mnt/shared"

    for edit in (old_ray, no_gpus, work_dir_off_the_shared_volume, worker_mounts_elsewhere):
        assert rayjob_problems(broken_job(edit)), edit.__name__

    def retagged(spec):
        for pod_spec in pod_specs({"spec": spec}).values():
            for container in pod_spec["containers"]:
                container["image"] = container["image"].replace(pyproject()["version"], "9.9.9")

    assert image_tag_problems(compose(), broken_job(retagged) + mlflow_documents())


@pytest.mark.parametrize("command", [("ray", "start"), ("mlflow", "server")])
def test_cli_flag_parser_reads_the_real_help(command):
    # Guards the flag checks against a help format they cannot read (which
    # would make every flag look unknown, or, worse, none).
    flags = cli_flags(*command)
    assert {"--help"} < flags
    assert ("--head" in flags) if command[0] == "ray" else ("--backend-store-uri" in flags)
    assert "--no-such-flag" not in flags


def test_auth_checks_reject_broken_copies(tmp_path):
    # compose.yaml: each edit, and the check that must catch it.
    def ray_nodes(services):
        return services_running(services, "ray", "start")

    def head(services):
        return next(s for n, s in services.items() if "--head" in ray_nodes(services).get(n, []))

    def worker(services):
        return next(
            s for n, s in services.items() if n in ray_nodes(services) and s is not head(services)
        )

    def mlflow(services):
        return services[next(iter(services_running(services, "mlflow", "server")))]

    def postgres(services):
        return next(s for s in services.values() if s.get("image", "").startswith("postgres:"))

    def set_env(service, **values):
        service["environment"] = {**environment(service), **values}

    def drop_env(service, name):
        service["environment"] = {k: v for k, v in environment(service).items() if k != name}

    def set_command(service, edit):
        service["command"] = edit(shell_words(service["command"]))

    compose_edits = {
        "worker without token auth": (
            lambda s: set_env(worker(s), RAY_AUTH_MODE="disabled"),
            compose_ray_auth_problems,
        ),
        "head without RAY_AUTH_MODE": (
            lambda s: drop_env(head(s), "RAY_AUTH_MODE"),
            compose_ray_auth_problems,
        ),
        "token path not mounted": (
            lambda s: set_env(head(s), RAY_AUTH_TOKEN_PATH="/home/ray/token"),
            compose_ray_auth_problems,
        ),
        "token written in": (
            lambda s: set_env(head(s), RAY_AUTH_TOKEN="0123456789abcdef"),
            compose_ray_auth_problems,
        ),
        "worker without an MLflow login": (
            lambda s: worker(s).update(secrets=["ray_auth_token"]),
            compose_ray_auth_problems,
        ),
        "mlflow without basic auth": (
            lambda s: set_command(mlflow(s), lambda w: [x for x in w if "--app-name" not in x]),
            mlflow_service_problems,
        ),
        "admin password not from a secret": (
            lambda s: mlflow(s).pop("entrypoint"),
            mlflow_service_problems,
        ),
        "admin password's secret not mounted": (
            lambda s: mlflow(s).update(secrets=["mlflow_flask_secret_key", "postgres_password"]),
            mlflow_service_problems,
        ),
        "no admin user name": (
            lambda s: drop_env(mlflow(s), "MLFLOW_AUTH_ADMIN_USERNAME"),
            mlflow_service_problems,
        ),
        "users kept in the container": (
            lambda s: mlflow(s).update(working_dir="/tmp"),
            mlflow_service_problems,
        ),
        "database password written in": (
            lambda s: set_env(postgres(s), POSTGRES_PASSWORD="mlflow-password"),
            lambda s: literal_credential_problems(s, "compose"),
        ),
        "password in the backend store URI": (
            lambda s: set_command(
                mlflow(s),
                lambda w: [x.replace("mlflow@", "mlflow:mlflow-password@") for x in w],
            ),
            lambda s: literal_credential_problems(s, "compose"),
        ),
        "admin password written in the entrypoint": (
            lambda s: mlflow(s).update(
                entrypoint=[
                    x.replace("$$(cat /run/secrets/mlflow_admin_password)", "hunter2hunter2")
                    for x in mlflow(s)["entrypoint"]
                ]
            ),
            lambda s: literal_credential_problems(s, "compose") and mlflow_service_problems(s),
        ),
        "MLflow password in a list environment": (
            lambda s: worker(s).update(
                environment=["MLFLOW_TRACKING_URI=http://mlflow:5000", "MLFLOW_TRACKING_PASSWORD=x"]
            ),
            lambda s: literal_credential_problems(s, "compose"),
        ),
        "MLflow published on every interface": (
            lambda s: mlflow(s).update(ports=["0.0.0.0:5000:5000"]),
            published_port_problems,
        ),
    }
    for mistake, (edit, check) in compose_edits.items():
        services = copy.deepcopy(compose()["services"])
        edit(services)
        assert check(services), mistake

    folder = tmp_path / "secrets"
    subprocess.run(["bash", str(MAKE_SECRETS), str(folder)], check=True, capture_output=True)

    def undeclared(document):
        head(document["services"])["secrets"].append("nosuchsecret")

    def outside_secrets(document):
        document["secrets"]["ray_auth_token"] = {"file": "/home/me/token"}

    def not_made(document):
        document["secrets"]["ray_auth_token"] = {"file": "./secrets/nosuchfile"}

    for edit in (undeclared, outside_secrets, not_made):
        document = copy.deepcopy(compose())
        edit(document)
        assert compose_secret_problems(document, folder), edit.__name__
    (folder / "mlflow_credentials").write_text(
        "[mlflow]\nmlflow_tracking_username = admin\nmlflow_tracking_password = other\n"
    )
    assert compose_secret_problems(compose(), folder), "another MLflow login"
    subprocess.run(["bash", str(MAKE_SECRETS), str(folder)], check=True, capture_output=True)
    (folder / "postgres_password").chmod(0o600)
    assert compose_secret_problems(compose(), folder), "unreadable to the containers"
    (folder / "postgres_password").chmod(0o644)
    folder.chmod(0o755)
    assert compose_secret_problems(compose(), folder), "folder open to everyone"

    # rayjob.yaml and mlflow.yaml
    def containers(spec, pod):
        if pod == "submitter":
            return spec["submitterPodTemplate"]["spec"]["containers"]
        cluster = spec["rayClusterSpec"]
        if pod == "head":
            return cluster["headGroupSpec"]["template"]["spec"]["containers"]
        return cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"]

    def set_k8s_env(spec, pod, name, **entry):
        container = containers(spec, pod)[0]
        env = [e for e in container.get("env", []) if e["name"] != name]
        container["env"] = env + ([{"name": name, **entry}] if entry else [])

    def network_policy(documents):
        return of_kind(documents, "NetworkPolicy")[0]["spec"]

    def submitter_labels(spec):
        return spec["submitterPodTemplate"]["metadata"]["labels"]

    token_from_elsewhere = {"valueFrom": {"secretKeyRef": {"name": "other", "key": "auth_token"}}}
    job_edits = {
        "no authOptions": (
            lambda d: ray_job(d)["spec"]["rayClusterSpec"].pop("authOptions"),
            rayjob_auth_problems,
        ),
        "authOptions name another Secret": (
            lambda d: ray_job(d)["spec"]["rayClusterSpec"]["authOptions"].update(secretName="x"),
            rayjob_auth_problems,
        ),
        "worker without token auth": (
            lambda d: set_k8s_env(ray_job(d)["spec"], "worker", "RAY_AUTH_MODE", value="disabled"),
            rayjob_auth_problems,
        ),
        "head without the token": (
            lambda d: set_k8s_env(ray_job(d)["spec"], "head", "RAY_AUTH_TOKEN"),
            rayjob_auth_problems,
        ),
        "head token from another Secret": (
            lambda d: set_k8s_env(
                ray_job(d)["spec"], "head", "RAY_AUTH_TOKEN", **token_from_elsewhere
            ),
            rayjob_auth_problems,
        ),
        "token written in": (
            lambda d: set_k8s_env(ray_job(d)["spec"], "worker", "RAY_AUTH_TOKEN", value="0123abcd"),
            lambda d: rayjob_auth_problems(d) and literal_credential_problems(d, "rayjob"),
        ),
        "no submitter template": (
            lambda d: ray_job(d)["spec"].pop("submitterPodTemplate"),
            rayjob_auth_problems,
        ),
        "submitter without token auth": (
            lambda d: set_k8s_env(ray_job(d)["spec"], "submitter", "RAY_AUTH_MODE"),
            rayjob_auth_problems,
        ),
        "MLflow password written in": (
            lambda d: set_k8s_env(
                ray_job(d)["spec"], "head", "MLFLOW_TRACKING_PASSWORD", value="pw"
            ),
            lambda d: rayjob_auth_problems(d) and literal_credential_problems(d, "rayjob"),
        ),
        "MLflow password in the runtime env": (
            lambda d: ray_job(d)["spec"].update(
                runtimeEnvYAML="env_vars:\n  MLFLOW_TRACKING_PASSWORD: pw\n"
            ),
            lambda d: literal_credential_problems(d, "rayjob"),
        ),
        "MLflow URI with a password in the runtime env": (
            lambda d: ray_job(d)["spec"].update(
                runtimeEnvYAML="env_vars:\n  MLFLOW_TRACKING_URI: http://a:pw@mlflow.vggpipe.svc:5000\n"
            ),
            lambda d: literal_credential_problems(d, "rayjob"),
        ),
        "a Secret written in": (
            lambda d: d.append(
                {"apiVersion": "v1", "kind": "Secret", "stringData": {"auth_token": "x"}}
            ),
            lambda d: literal_credential_problems(d, "rayjob"),
        ),
        "no NetworkPolicy": (
            lambda d: d.remove(of_kind(d, "NetworkPolicy")[0]),
            network_policy_problems,
        ),
        "policy selects every pod of the job": (
            lambda d: network_policy(d)["podSelector"]["matchLabels"].pop(
                "app.kubernetes.io/component"
            ),
            network_policy_problems,
        ),
        "policy restricts egress only": (
            lambda d: network_policy(d).update(policyTypes=["Egress"]),
            network_policy_problems,
        ),
        "a rule from anywhere": (
            lambda d: network_policy(d)["ingress"].append({"ports": [{"port": 6379}]}),
            network_policy_problems,
        ),
        "a rule from an address block": (
            lambda d: network_policy(d)["ingress"].append(
                {"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}
            ),
            network_policy_problems,
        ),
        "the operator on every port": (
            lambda d: network_policy(d)["ingress"][1].pop("ports"),
            network_policy_problems,
        ),
        "any pod of any namespace on the dashboard": (
            lambda d: network_policy(d)["ingress"][1]["from"][0].update(podSelector={}),
            network_policy_problems,
        ),
        "another job's pods": (
            lambda d: network_policy(d)["ingress"][0]["from"][0]["podSelector"][
                "matchLabels"
            ].update({"app.kubernetes.io/instance": "other"}),
            network_policy_problems,
        ),
        "submitter left out": (
            lambda d: submitter_labels(ray_job(d)["spec"]).pop("app.kubernetes.io/instance"),
            network_policy_problems,
        ),
    }
    for mistake, (edit, check) in job_edits.items():
        documents = copy.deepcopy(rayjob_documents())
        edit(documents)
        assert check(documents), mistake

    def server(documents):
        return of_kind(documents, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]

    def set_server_env(documents, name, **entry):
        container = server(documents)
        container["env"] = [e for e in container["env"] if e["name"] != name] + [
            {"name": name, **entry}
        ]

    mlflow_edits = {
        "without basic auth": lambda d: server(d).update(
            command=["mlflow", "server", "--port=5000"]
        ),
        "admin password written in": lambda d: set_server_env(
            d, "MLFLOW_AUTH_ADMIN_PASSWORD", value="x" * 16
        ),
        "database URI in the command": lambda d: server(d)["command"].append(
            "--backend-store-uri=postgresql://mlflow@db:5432/mlflow"
        ),
        "unknown flag": lambda d: server(d)["command"].append("--no-such-flag"),
        "users kept in the container": lambda d: server(d).update(workingDir="/tmp"),
        "Service on another port": lambda d: of_kind(d, "Service")[0]["spec"].update(
            ports=[{"port": 5001, "targetPort": 5000}]
        ),
        "admin from another Secret": lambda d: set_server_env(
            d,
            "MLFLOW_AUTH_ADMIN_USERNAME",
            valueFrom={"secretKeyRef": {"name": "other", "key": "u"}},
        ),
    }
    for mistake, edit in mlflow_edits.items():
        documents = copy.deepcopy(mlflow_documents())
        edit(documents)
        assert mlflow_k8s_problems(documents, rayjob_documents()), mistake
    documents = copy.deepcopy(mlflow_documents())
    set_server_env(documents, "MLFLOW_AUTH_ADMIN_PASSWORD", value="x" * 16)
    assert literal_credential_problems(documents, "mlflow.yaml")

    dockerfile = DOCKERFILE.read_text()
    assert pip_install_problems(dockerfile.replace("mlflow[auth]==3.17.2", "mlflow[auth]==3.0.0"))
