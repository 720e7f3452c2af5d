"""A private containerd for tests: its own root, state, sockets and CRI settings under a work dir.

The system's containerd (if any) is never used: every path containerd would otherwise take from a
system default (``/var/lib/containerd``, ``/run/containerd``, ``/opt/containerd``, runc's state root,
the CNI directories) points into the work dir. One exception is containerd 1.6's own: shim sockets
live in ``/run/containerd/s/<hash of the grpc address>``, which no setting moves; the hash keeps them
apart from the system's. The CRI plugin is set up for the test kubelet: the locally built pause image
as ``sandbox_image``, runc with cgroupfs, and ``restrict_oom_score_adj`` (this VM refuses to lower
``oom_score_adj``; without it every sandbox fails in runc's nsexec).

Images come from ``make images`` (hack/images.py): ``import_built_images`` loads every image listed in
``.cache/images/images.json`` under all of its tags.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hack.images import MANIFEST, BuiltImage, Role, normalized, read_manifest

from tests.support.polling import eventually

DEBIAN_CNI_BIN_DIR = Path("/usr/lib/cni")
PAUSE_IMAGE = "localhost/streampipe-pause:1"


class ContainerdError(RuntimeError):
    """containerd or ctr is missing, did not start, or a ctr command failed."""


def require_binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ContainerdError(f"{name} is missing: apt-get install {package} (`make setup` does it as root)")
    return found


def snapshotter_for(workdir: Path) -> str:
    """``overlayfs`` when an overlay mount works in ``workdir`` (not, say, on an overlay root), else
    ``native`` (full copies: slower, works everywhere)."""
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "native"
    probe = workdir / "overlay-probe"
    dirs = {name: probe / name for name in ("lower", "upper", "work", "merged")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    options = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
    mounted = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(dirs["merged"])],
        capture_output=True,
        check=False,
    )
    if mounted.returncode == 0:
        subprocess.run(["umount", str(dirs["merged"])], check=True)
    shutil.rmtree(probe)
    return "overlayfs" if mounted.returncode == 0 else "native"


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory``, deepest first (the order to unmount them in)."""
    found = []
    prefix = str(directory.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        # Field 5 is the mount point, with spaces and the like octal-escaped.
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(set(found), key=lambda path: len(path.parts), reverse=True)


class Containerd:
    """One containerd process owned by a test, with everything under ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        *,
        sandbox_image: str = PAUSE_IMAGE,
        cni_bin_dir: Path | None = None,
        cni_conf_dir: Path | None = None,
    ) -> None:
        self.binary = require_binary("containerd", "containerd")
        self.ctr_binary = require_binary("ctr", "containerd")
        require_binary("runc", "runc")
        self.workdir = workdir.resolve()
        self.sandbox_image = sandbox_image
        self.cni_bin_dir = cni_bin_dir or DEBIAN_CNI_BIN_DIR
        # No CNI config means NetworkNotReady, never the host's /etc/cni/net.d.
        self.cni_conf_dir = cni_conf_dir or self.workdir / "cni" / "net.d"
        self.socket = self.workdir / "containerd.sock"
        self.config_file = self.workdir / "containerd.toml"
        self.logfile = self.workdir / "containerd.log"
        self.snapshotter = "native"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def config(self) -> str:
        w = self.workdir
        return f"""version = 2
root = "{w / "root"}"
state = "{w / "state"}"
oom_score = 0

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{w / "containerd.sock.ttrpc"}"

[debug]
  address = "{w / "debug.sock"}"
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{w / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{self.sandbox_image}"
  restrict_oom_score_adj = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{self.snapshotter}"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{w / "runc"}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{self.cni_bin_dir}"
    conf_dir = "{self.cni_conf_dir}"
"""

    def start(self, timeout: float = 30) -> Containerd:
        """Start containerd and wait until it answers on its socket."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        self.snapshotter = snapshotter_for(self.workdir)
        self.config_file.write_text(self.config())
        with self.logfile.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            return self.ctr("version", check=False, timeout=5).returncode == 0

        eventually(answers, within=timeout, what=f"containerd to answer on {self.socket}", every=0.2)
        return self

    def log_tail(self, lines: int = 40) -> str:
        if not self.logfile.exists():
            return ""
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    def ctr(
        self, *args: str, namespace: str = "k8s.io", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``ctr`` against this containerd in ``namespace``; a ContainerdError with its output when
        ``check`` and it fails."""
        command = [self.ctr_binary, "--address", str(self.socket), "--namespace", namespace, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise ContainerdError(
                f"ctr {' '.join(args)} exited with {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        return done

    def import_image(self, archive: Path, namespace: str = "k8s.io") -> None:
        """Import a docker-archive, unpacked for this containerd's snapshotter (the CRI plugin only
        runs images unpacked for its own)."""
        self.ctr(
            "images",
            "import",
            "--snapshotter",
            self.snapshotter,
            str(archive),
            namespace=namespace,
            timeout=600,
        )

    def namespaces(self) -> list[str]:
        return self.ctr("namespaces", "list", "--quiet").stdout.split()

    def remove_containers(self, namespace: str) -> None:
        """Kill every task of ``namespace`` (SIGKILL), delete the tasks, then the containers."""
        tasks = self.ctr("tasks", "list", "--quiet", namespace=namespace).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, namespace=namespace, check=False)
        for task in tasks:
            self.ctr("tasks", "delete", "--force", task, namespace=namespace, check=False)
        containers = self.ctr("containers", "list", "--quiet", namespace=namespace).stdout.split()
        if containers:
            self.ctr("containers", "delete", *containers, namespace=namespace, check=False)

    def stop(self, timeout: float = 10) -> None:
        """Remove every container (all namespaces), stop containerd by PID (SIGTERM, SIGKILL after
        ``timeout``), then unmount whatever is left under the work dir, so it can be deleted."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ContainerdError, subprocess.TimeoutExpired):
                for namespace in self.namespaces():
                    self.remove_containers(namespace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        for point in mounts_under(self.workdir):
            unmounted = subprocess.run(["umount", str(point)], capture_output=True, check=False)
            if unmounted.returncode != 0:
                # Still busy (a process of a killed container on its way out): detach it now; the
                # kernel frees it when the last user goes.
                subprocess.run(["umount", "--lazy", str(point)], capture_output=True, check=False)


@contextmanager
def running_containerd(
    workdir: Path,
    *,
    sandbox_image: str = PAUSE_IMAGE,
    cni_bin_dir: Path | None = None,
    cni_conf_dir: Path | None = None,
) -> Iterator[Containerd]:
    """A started Containerd, stopped (and its mounts undone) afterwards."""
    containerd = Containerd(
        workdir, sandbox_image=sandbox_image, cni_bin_dir=cni_bin_dir, cni_conf_dir=cni_conf_dir
    )
    try:
        yield containerd.start()
    finally:
        containerd.stop()


def import_built_images(
    containerd: Containerd,
    *,
    roles: Sequence[Role] | None = None,
    namespace: str = "k8s.io",
    manifest: Path = MANIFEST,
) -> dict[Role, BuiltImage]:
    """Import the images ``make images`` built (all of them, or ``roles``), each under every tag
    images.json lists; the imported entries by role."""
    built = read_manifest(manifest)
    if not built:
        raise ContainerdError(f"{manifest} lists no images: run `make images`")
    wanted = {role: image for role, image in built.items() if roles is None or role in roles}
    for image in wanted.values():
        containerd.import_image(manifest.parent / image.archive, namespace=namespace)
        primary = normalized(image.tags[0])
        for tag in image.tags[1:]:
            containerd.ctr("images", "tag", "--force", primary, normalized(tag), namespace=namespace)
    return wanted
