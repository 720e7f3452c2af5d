"""Build the chart linters into .cache/bin/ from the Go module proxy (idempotent, no-op when present).

- ct (chart-testing) v3.14.0, kubeconform v0.8.0, kube-score v1.20.0, pinned; each is rebuilt only
  when ``go version -m`` of the binary in .cache/bin does not name the pinned module version.
- ct is not built with ``go install module@version``: that reads the module's version list
  (``@v/list``) to look for a deprecation notice, and the proxy here answers 403 for chart-testing's
  list while serving v3.14.0 itself. A throwaway module requires it instead and ``go build`` builds it.
- ct's default configuration (``etc/chart_schema.yaml`` for yamale, ``etc/lintconf.yaml`` for
  yamllint) ships in the module source; it is copied from the module cache into .cache/ct/, the
  directory tests/k8s/test_chart_linters.py points ct at.
- yamllint and yamale, which ct runs, come from PyPI with the dev extras (pyproject.toml).

kube-linter and pluto are not here: the proxy refuses golang.stackrox.io/kube-linter and
github.com/FairwindsOps/pluto/v5 (403); kube-score takes kube-linter's place, and kubeconform against
the test API server's own schemas covers pluto's question (is every apiVersion still served).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".cache" / "bin"
CT_CONFIG = ROOT / ".cache" / "ct"
CT_CONFIG_FILES = ("chart_schema.yaml", "lintconf.yaml")


@dataclass(frozen=True)
class GoTool:
    """A command built from ``package`` of ``module`` at ``version`` into .cache/bin/``name``."""

    name: str
    module: str
    version: str
    package: str
    # go install refuses modules whose version list the proxy will not serve (see the docstring).
    via_go_install: bool = True


CT = GoTool("ct", "github.com/helm/chart-testing/v3", "v3.14.0", "ct", via_go_install=False)
TOOLS = (
    CT,
    GoTool("kubeconform", "github.com/yannh/kubeconform", "v0.8.0", "cmd/kubeconform"),
    GoTool("kube-score", "github.com/zegl/kube-score", "v1.20.0", "cmd/kube-score"),
)


def log(message: str) -> None:
    print(f"chart-linters: {message}", flush=True)


def go() -> str:
    found = shutil.which("go")
    if found is None:
        raise SystemExit("chart-linters: `go` not on PATH; the chart linters are built with Go 1.24+")
    return found


def is_current(tool: GoTool) -> bool:
    """The binary exists and was built from the pinned module version (its embedded build info)."""
    binary = BIN / tool.name
    if not binary.exists():
        return False
    done = subprocess.run([go(), "version", "-m", str(binary)], capture_output=True, text=True, check=False)
    return any(line.split()[1:3] == [tool.module, tool.version] for line in done.stdout.splitlines()[1:])


def build(tool: GoTool) -> None:
    package = f"{tool.module}/{tool.package}"
    env = {**os.environ, "GOFLAGS": "-buildvcs=false"}
    if tool.via_go_install:
        log(f"go install {package}@{tool.version} ...")
        subprocess.run(
            [go(), "install", f"{package}@{tool.version}"], env={**env, "GOBIN": str(BIN)}, check=True
        )
        return
    log(f"go build {package} at {tool.version} (from a throwaway module) ...")
    version_flag = f"-X {tool.module}/ct/cmd.Version={tool.version}"
    with tempfile.TemporaryDirectory(prefix=f"{tool.name}-build-") as workdir:
        for command in (
            [go(), "mod", "init", f"streampipe.dev/tools/{tool.name}"],
            [go(), "get", f"{package}@{tool.version}"],
            [go(), "build", "-trimpath", "-ldflags", version_flag, "-o", str(BIN / tool.name), package],
        ):
            done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"chart-linters: {' '.join(command)} failed:\n{done.stderr}")


def copy_ct_config() -> None:
    """ct's default chart_schema.yaml and lintconf.yaml, from the pinned module's source."""
    if all((CT_CONFIG / name).exists() for name in CT_CONFIG_FILES):
        return
    done = subprocess.run(
        [go(), "mod", "download", "-json", f"{CT.module}@{CT.version}"],
        capture_output=True,
        text=True,
        check=True,
    )
    source = Path(json.loads(done.stdout)["Dir"]) / "etc"
    CT_CONFIG.mkdir(parents=True, exist_ok=True)
    for name in CT_CONFIG_FILES:
        shutil.copyfile(source / name, CT_CONFIG / name)
        log(f".cache/ct/{name} <- {CT.module}@{CT.version}/etc/{name}")


def main() -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    for tool in TOOLS:
        if not is_current(tool):
            build(tool)
    copy_ct_config()


if __name__ == "__main__":
    main()
