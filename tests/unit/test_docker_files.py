"""docker/: the Dockerfile, the compose file and the KubeRay RayJob agree with
pyproject.toml, with the CLIs they call (`ray start`, `mlflow server`,
`python -m jobs.run`) and with each other. There is no Docker engine here, so
the files are parsed, not run. Each check returns its problems as strings, so
that test_checks_reject_broken_copies can show the same checks fail on a copy
with a deliberate mistake."""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import shlex
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

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
RAYJOB = DOCKER / "rayjob.yaml"
LOOPBACK = "127.0.0.1"


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


def ray_job(documents: list[dict]) -> dict:
    (job,) = [d for d in documents if d.get("kind") == "RayJob"]
    return job


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


def pod_specs(job: dict) -> dict[str, dict]:
    """{"head": pod spec, "worker <group>": pod spec} of a RayJob's cluster."""
    cluster = job["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    for group in cluster.get("workerGroupSpecs", []):
        specs[f"worker {group['groupName']}"] = group["template"]["spec"]
    return specs


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
    extras = set(pyproject().get("optional-dependencies", {}))
    known = {canonicalize_name(r.name) for r in project_requirements()}
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
    mlflow = services_running(services, "mlflow", "server")
    if len(mlflow) != 1:
        return [f"want one mlflow server service, got {sorted(mlflow)}"]
    ((name, words),) = mlflow.items()
    unknown = set(flags_used(words)) - cli_flags("mlflow", "server")
    problems = [f"{name}: `mlflow server` has no option {f}" for f in sorted(unknown)]
    if (flag_value(words, "--port") or "5000") not in container_ports(services[name]):
        problems.append(f"{name}: its --port is not the published container port")
    postgres = {n: s for n, s in services.items() if s.get("image", "").startswith("postgres:")}
    if len(postgres) != 1:
        return [*problems, f"want one postgres:<version> service, got {sorted(postgres)}"]
    ((db_name, db),) = postgres.items()
    uri = urlsplit(flag_value(words, "--backend-store-uri") or "")
    env = environment(db)
    if uri.scheme != "postgresql":
        problems.append(f"{name}: backend store {uri.geturl()!r} is not postgresql://")
    got = (uri.username, uri.password, uri.hostname, uri.port, uri.path.lstrip("/"))
    want = (
        env.get("POSTGRES_USER"),
        env.get("POSTGRES_PASSWORD"),
        db_name,
        5432,
        env.get("POSTGRES_DB"),
    )
    if got != want:
        problems.append(f"{name}: backend store (user, password, host, port, db) {got} != {want}")
    test = shell_words(db.get("healthcheck", {}).get("test", []))
    if not any("pg_isready" in word for word in test):
        problems.append(f"{db_name}: no pg_isready healthcheck")
    condition = services[name].get("depends_on", {}).get(db_name, {}).get("condition")
    if condition != "service_healthy":
        problems.append(f"{name}: does not wait for {db_name} to be healthy")
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


def image_tag_problems(compose_document: dict, documents: list[dict]) -> list[str]:
    """Every image of this project (by name, whatever the registry) carries
    pyproject's version, and the compose build produces that image."""
    name, version = pyproject()["name"], pyproject()["version"]
    images = [s.get("image", "") for s in compose_document["services"].values()]
    for pod_spec in pod_specs(ray_job(documents)).values():
        images += [c["image"] for c in pod_spec["containers"]]
    ours = [i for i in images if image_name_tag(i)[0] == name]
    problems = [f"{i}: not tagged {version}" for i in ours if image_name_tag(i)[1] != version]
    for service, spec in compose_document["services"].items():
        if "build" in spec and image_name_tag(spec.get("image", ""))[0] != name:
            problems.append(f"{service}: builds {spec.get('image')!r}, not a {name} image")
    if len(ours) < 4:  # head, worker and mlflow in compose; the RayJob's pods
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


def test_project_images_are_tagged_with_the_project_version():
    assert image_tag_problems(compose(), rayjob_documents()) == []


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

    def wrong_password(services):
        db = next(s for s in services.values() if s.get("image", "").startswith("postgres:"))
        db["environment"] = {**environment(db), "POSTGRES_PASSWORD": "other"}

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
    assert mlflow_service_problems(broken(wrong_password)["services"])
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

    assert image_tag_problems(compose(), broken_job(retagged))


@pytest.mark.parametrize("command", [("ray", "start"), ("mlflow", "server")])
def test_cli_flag_parser_reads_the_real_help(command):
    # Guards the flag checks against a help format they cannot read (which
    # would make every flag look unknown, or, worse, none).
    flags = cli_flags(*command)
    assert {"--help"} < flags
    assert ("--head" in flags) if command[0] == "ray" else ("--backend-store-uri" in flags)
    assert "--no-such-flag" not in flags
