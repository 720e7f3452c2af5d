"""Build streampipe's container images with buildah (no Docker), incrementally, into .cache/images/.

``make images`` (or ``build_all()`` from the tests) builds, in order:

- ``base``: a stand-in for the Dockerfiles' default ``python:3.11.14-slim-bookworm``, which cannot be
  pulled here: Debian bookworm (mmdebstrap minbase) with Python 3.11, its venv module and CA
  certificates, tagged ``localhost/<the Dockerfiles' default>``;
- ``worker`` and ``operator``: ``Dockerfile.worker`` and ``Dockerfile.operator``, unchanged, FROM the
  stand-in, tagged as the chart and the team Dockerfiles expect them;
- ``team`` and ``quickstart``: the team images of ``examples/worker-image`` and
  ``examples/quickstart``, FROM the worker image, tagged as the examples' StreamPipelines name them;
- ``pause``: the sandbox image the test kubelet's containerd uses (``tests/cluster/pause``).

Each image is written as a docker-archive (with its tag, so ``ctr images import`` names it) and listed
in ``.cache/images/images.json``. An image is rebuilt only when its inputs change: the files its
Dockerfile copies, the Dockerfile, its build arguments and tags, and the id of the image it is built
FROM. buildah's storage (vfs) lives under ``.cache/buildah``: nothing system-wide is touched.

pip inside a build uses the host's pip configuration (index, CA bundle): a generated ``pip.conf`` and
the CA file are mounted read-only for the RUN steps only, so neither ends up in an image.
"""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Literal

import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
STORAGE = CACHE / "buildah"
OUT = CACHE / "images"
MANIFEST = OUT / "images.json"
PAUSE_SOURCE = ROOT / "tests" / "cluster" / "pause"

Role = Literal["base", "worker", "operator", "team", "quickstart", "pause"]

# The stand-in base: what python:3.11-slim-bookworm offers the Dockerfiles (python, python3 on PATH,
# `python -m venv` with pip, CA certificates), built from Debian's packages. Part of its input hash.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3.11", "python3.11-venv", "ca-certificates")
BASE_LINKS = {"/usr/local/bin/python": "/usr/bin/python3.11", "/usr/local/bin/python3": "/usr/bin/python3.11"}
BASE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Documentation and translations are dead weight in an image, and vfs copies every byte per build.
BASE_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")

PAUSE_TAG = "localhost/streampipe-pause:1"
PAUSE_USER = "65535:65535"  # the uid Kubernetes' own pause image runs as

# pip settings that make the index reachable from inside a build; host-local ones (find-links, a
# wheel cache) would name paths the build cannot see.
PIP_SETTINGS = ("index-url", "extra-index-url", "trusted-host", "cert", "client-cert", "timeout", "retries")
PIP_FILE_SETTINGS = ("cert", "client-cert")


class BuildError(Exception):
    """A build step failed, with what to do about it."""


@dataclass(frozen=True)
class BuiltImage:
    """One entry of images.json. ``archive`` is relative to the directory of images.json."""

    role: Role
    tags: list[str]
    archive: str
    image_id: str
    input_hash: str


@dataclass(frozen=True)
class DockerfileImage:
    """An image built from a Dockerfile with the repository root as its build context."""

    role: Role
    dockerfile: Path
    tags: list[str]
    base_role: Role
    base_arg: str
    seconds: int
    build_args: dict[str, str] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def normalized(reference: str) -> str:
    """The name containerd and the kubelet use for ``reference`` (``x:1`` is ``docker.io/library/x:1``)."""
    first, _, rest = reference.partition("/")
    if not rest:
        return f"docker.io/library/{reference}"
    if "." in first or ":" in first or first == "localhost":
        return reference
    return f"docker.io/{reference}"


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in joined.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def arg_default(dockerfile: Path, name: str) -> str:
    for keyword, rest in dockerfile_instructions(dockerfile):
        key, _, value = rest.partition("=")
        if keyword == "ARG" and key == name and value:
            return value
    raise BuildError(f"{dockerfile.relative_to(ROOT)}: no `ARG {name}=<default>`")


def copied_sources(dockerfile: Path) -> list[Path]:
    """The build-context paths a Dockerfile's COPY instructions read (not ``COPY --from``)."""
    sources = []
    for keyword, rest in dockerfile_instructions(dockerfile):
        if keyword == "COPY" and not rest.startswith("--from"):
            sources += [ROOT / source for source in rest.split()[:-1] if not source.startswith("--")]
    return sources


def ignored_names() -> list[str]:
    """The ``**/<name>`` patterns of .dockerignore: files a build never sees, so they hash as absent."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.removeprefix("**/") for line in lines if line.startswith("**/")]


def context_files(paths: Sequence[Path]) -> Iterator[Path]:
    patterns = ignored_names()
    for path in paths:
        if not path.exists():
            raise BuildError(f"{path.relative_to(ROOT)} is missing (a Dockerfile copies it)")
        candidates = sorted(path.rglob("*")) if path.is_dir() else [path]
        for candidate in candidates:
            parts = candidate.relative_to(ROOT).parts
            if candidate.is_file() and not any(fnmatch(p, pat) for p in parts for pat in patterns):
                yield candidate


def input_hash(recipe: object, files: Sequence[Path] = ()) -> str:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode())
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def read_manifest(path: Path = MANIFEST) -> dict[Role, BuiltImage]:
    """The images of the last build, by role (empty when nothing was built yet)."""
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())["images"]
    return {entry["role"]: BuiltImage(**entry) for entry in entries}


def write_manifest(images: dict[Role, BuiltImage], path: Path = MANIFEST) -> None:
    body = {"images": [asdict(image) for image in images.values()]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(path)


class Buildah:
    """buildah with the project's own storage under .cache/buildah (vfs, chroot isolation)."""

    def __init__(self, storage: Path = STORAGE) -> None:
        if shutil.which("buildah") is None:
            raise BuildError("buildah is missing: apt-get install buildah (or `make setup` as root)")
        self.storage = storage
        (storage / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env.update(
            {"STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot", "TMPDIR": str(storage / "tmp")}
        )

    def __call__(self, *args: str, quiet: bool = True) -> str:
        command = [
            "buildah",
            "--root",
            str(self.storage / "root"),
            "--runroot",
            str(self.storage / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]
        done = subprocess.run(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if quiet else None,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            detail = (done.stderr or "")[-4000:] + done.stdout[-4000:]
            raise BuildError(f"buildah {args[0]} failed (exit {done.returncode}):\n{detail}")
        return done.stdout

    def image_ids(self) -> set[str]:
        listed = json.loads(self("images", "--json", "--no-trunc") or "[]")
        return {entry["id"].removeprefix("sha256:") for entry in listed}

    def image_id(self, reference: str) -> str:
        config = json.loads(self("inspect", "--type", "image", reference))
        image_id: str = config["FromImageID"]
        return image_id

    def export(self, role: Role, tags: list[str]) -> str:
        """Write the docker-archive of ``tags[0]`` (named, so an import tags it); its file name."""
        archive = OUT / f"{role}.tar"
        tmp = archive.with_suffix(".tar.tmp")
        tmp.unlink(missing_ok=True)
        self("push", tags[0], f"docker-archive:{tmp}:{tags[0]}")
        tmp.replace(archive)
        return archive.name


def host_pip_settings() -> dict[str, str]:
    """The host pip's effective settings that matter inside a build (files first, environment last)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    from_files: dict[str, str] = {}
    from_env: dict[str, str] = {}
    for line in listed:
        key, _, value = line.partition("=")
        scope, _, name = key.rpartition(".")
        if name in PIP_SETTINGS:
            (from_env if scope.startswith(":env:") else from_files)[name] = value.strip("'\"")
    return from_files | from_env


def pip_mounts(workdir: Path) -> list[str]:
    """``-v`` options that give RUN steps (as root) the host pip's configuration, read-only.

    A bind mount's target is created in the image when it does not exist (an empty /etc/pip.conf
    would stay in every image whose last stage runs pip), so the configuration and the files it
    names go into a home directory mounted over /root, which every Debian image has.
    """
    settings = host_pip_settings()
    home = workdir / "pip-home"
    config_dir = home / ".config" / "pip"
    config_dir.mkdir(parents=True, exist_ok=True)
    for name in PIP_FILE_SETTINGS:
        if name in settings:
            path = Path(settings[name])
            if not path.is_file():
                raise BuildError(f"pip's {name} setting names {path}, which is not a file")
            shutil.copy(path, config_dir / f"{name}.pem")
            settings[name] = f"/root/.config/pip/{name}.pem"
    config = configparser.ConfigParser()
    config["global"] = settings
    with (config_dir / "pip.conf").open("w") as out:
        config.write(out)
    return ["-v", f"{home}:/root:ro"]


def host_apt_sources() -> list[str]:
    """The host's apt source files for the base's suite: mmdebstrap reads a file given as mirror."""
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    found = [
        str(path)
        for path in candidates
        if path.suffix in {".list", ".sources"} and path.is_file() and BASE_SUITE in path.read_text()
    ]
    if not found:
        raise BuildError(f"no apt source for Debian {BASE_SUITE} in /etc/apt: mmdebstrap needs one")
    return found


def build_base(buildah: Buildah, tag: str, workdir: Path) -> str:
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap is missing: apt-get install mmdebstrap (or `make setup` as root)")
    rootfs = workdir / "base.tar"
    hooks = [f'ln -sf {target} "$1{link}"' for link, target in BASE_LINKS.items()]
    command = [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        *[f"--dpkgopt=path-exclude={pattern}" for pattern in BASE_EXCLUDES],
        *[f"--customize-hook={hook}" for hook in hooks],
        BASE_SUITE,
        str(rootfs),
        *host_apt_sources(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BuildError(f"mmdebstrap failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    container = buildah("from", "scratch").strip()
    try:
        buildah("add", container, str(rootfs), "/")
        env_options = [option for key, value in BASE_ENV.items() for option in ("--env", f"{key}={value}")]
        buildah("config", *env_options, "--cmd", "python3", container)
        buildah("commit", "--quiet", container, tag)
    finally:
        buildah("rm", container)
    return buildah.image_id(tag)


def build_pause(buildah: Buildah, tag: str, workdir: Path) -> str:
    if shutil.which("go") is None:
        raise BuildError("go is missing: the pause image is a small Go program (install Go 1.22+)")
    binary = workdir / "pause"
    env = dict(os.environ, CGO_ENABLED="0")
    done = subprocess.run(
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), "."],
        cwd=PAUSE_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"go build of {PAUSE_SOURCE.relative_to(ROOT)} failed:\n{done.stderr[-4000:]}")
    container = buildah("from", "scratch").strip()
    try:
        buildah("copy", "--chmod", "0755", container, str(binary), "/pause")
        buildah("config", "--entrypoint", '["/pause"]', "--user", PAUSE_USER, container)
        buildah("commit", "--quiet", container, tag)
    finally:
        buildah("rm", container)
    return buildah.image_id(tag)


def build_dockerfile(buildah: Buildah, image: DockerfileImage, base_tag: str, workdir: Path) -> str:
    args = [f"{image.base_arg}={base_tag}", *(f"{k}={v}" for k, v in image.build_args.items())]
    buildah(
        "bud",
        "--quiet",
        "--pull=never",
        "--layers=false",
        *[option for arg in args for option in ("--build-arg", arg)],
        *pip_mounts(workdir),
        *[option for tag in image.tags for option in ("--tag", tag)],
        "--file",
        str(image.dockerfile),
        str(ROOT),
    )
    return buildah.image_id(image.tags[0])


def dockerfile_images() -> list[DockerfileImage]:
    """The Dockerfile-built images, in build order, with the tags their users look them up by."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = ROOT / "charts" / "streampipe"
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    image_values = yaml.safe_load((chart / "values.yaml").read_text())["image"]
    repository = "/".join(part for part in (image_values.get("registry"), image_values["repository"]) if part)
    team_dockerfile = ROOT / "examples" / "worker-image" / "Dockerfile"
    quickstart_dockerfile = ROOT / "examples" / "quickstart" / "Dockerfile"
    team_arg = "STREAMPIPE_WORKER_IMAGE"
    # What the team Dockerfiles build FROM when nobody passes the argument (docs/handlers.md).
    worker_default = normalized(arg_default(team_dockerfile, team_arg))
    pipeline = yaml.safe_load((ROOT / "examples" / "quickstart" / "pipeline.yaml").read_text())
    quickstart_tags = sorted({group["image"] for group in pipeline["spec"]["groups"]})
    return [
        DockerfileImage(
            "worker",
            ROOT / "Dockerfile.worker",
            [f"ghcr.io/streampipe/streampipe-worker:{version}", worker_default],
            "base",
            "PYTHON_IMAGE",
            25,
        ),
        DockerfileImage(
            "operator",
            ROOT / "Dockerfile.operator",
            [f"{repository}:{app_version}"],
            "base",
            "PYTHON_IMAGE",
            60,
        ),
        DockerfileImage(
            "team",
            team_dockerfile,
            ["registry.example.com/shop/billing-worker:1.4.2"],
            "worker",
            team_arg,
            20,
        ),
        DockerfileImage("quickstart", quickstart_dockerfile, quickstart_tags, "worker", team_arg, 20),
    ]


def base_tag() -> str:
    return "localhost/" + arg_default(ROOT / "Dockerfile.worker", "PYTHON_IMAGE")


def go_version() -> str:
    if shutil.which("go") is None:
        return "missing"
    return subprocess.run(
        ["go", "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()


def build_all(*, force: bool = False) -> dict[Role, BuiltImage]:
    """Build whatever is out of date (everything with ``force``); the manifest of all images."""
    OUT.mkdir(parents=True, exist_ok=True)
    # Test sessions of several people may build at once; one buildah store, one builder at a time.
    with (OUT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_out_of_date(force=force)


def build_out_of_date(*, force: bool) -> dict[Role, BuiltImage]:
    buildah = Buildah()
    manifest = read_manifest()
    stored: set[str] | None = None
    built_any = False

    def current(role: Role, digest: str) -> bool:
        nonlocal stored
        entry = manifest.get(role)
        if force or entry is None or entry.input_hash != digest or not (OUT / entry.archive).exists():
            return False
        if stored is None:
            stored = buildah.image_ids()
        return entry.image_id in stored

    def record(role: Role, tags: list[str], image_id: str, digest: str) -> None:
        nonlocal built_any
        built_any = True
        manifest[role] = BuiltImage(role, tags, buildah.export(role, tags), image_id, digest)
        write_manifest(manifest)

    with tempfile.TemporaryDirectory(dir=CACHE, prefix="images-build-") as tmp:
        workdir = Path(tmp)
        base = [base_tag()]
        recipe = {"suite": BASE_SUITE, "packages": BASE_PACKAGES, "links": BASE_LINKS, "env": BASE_ENV}
        digest = input_hash({**recipe, "excludes": BASE_EXCLUDES, "tags": base})
        if not current("base", digest):
            started = time.monotonic()
            log(f"building the base image {base[0]} with mmdebstrap (about 100 s)...")
            record("base", base, build_base(buildah, base[0], workdir), digest)
            log(f"base image built in {time.monotonic() - started:.0f} s")

        for image in dockerfile_images():
            parent = manifest[image.base_role]
            files = [image.dockerfile, *context_files(copied_sources(image.dockerfile))]
            recipe = {"tags": image.tags, "args": image.build_args, "from": parent.image_id}
            digest = input_hash(recipe, files)
            if current(image.role, digest):
                continue
            started = time.monotonic()
            log(f"building the {image.role} image {image.tags[0]} (about {image.seconds} s)...")
            image_id = build_dockerfile(buildah, image, parent.tags[0], workdir)
            record(image.role, image.tags, image_id, digest)
            log(f"{image.role} image built in {time.monotonic() - started:.0f} s")

        pause_files = sorted(p for p in PAUSE_SOURCE.iterdir() if p.suffix in {".go", ".mod"})
        digest = input_hash({"tags": [PAUSE_TAG], "user": PAUSE_USER, "go": go_version()}, pause_files)
        if not current("pause", digest):
            log(f"building the pause image {PAUSE_TAG} (about 10 s)...")
            record("pause", [PAUSE_TAG], build_pause(buildah, PAUSE_TAG, workdir), digest)

    if built_any:
        # Replaced images stay behind untagged, a full copy each under vfs.
        buildah("rmi", "--prune")
    return manifest


def main() -> None:
    force = "--force" in sys.argv[1:]
    started = time.monotonic()
    try:
        images = build_all(force=force)
    except BuildError as exc:
        raise SystemExit(f"images: {exc}") from None
    for image in images.values():
        log(f"{image.role:<10} {image.tags[0]:<55} {OUT.relative_to(ROOT) / image.archive}")
    log(f"done in {time.monotonic() - started:.1f} s; manifest {MANIFEST.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
