"""A test "pod runner": it plays the kubelet's part for streampipe's own worker Deployments only.

The test control plane has no kubelet, scheduler or controller-manager, so a Deployment never gets
pods. For the operator's end-to-end tests this runner watches (polls) the worker Deployments of one
namespace — those labelled ``app.kubernetes.io/managed-by=streampipe-operator`` and
``app.kubernetes.io/component=worker``, as ``workloads.build_deployment`` labels them — and runs
``spec.replicas`` local ``python -m streampipe_worker`` processes for each, with the container's
environment, through the product's own local process runtime (``streampipe_operator.local.processes``). It:

- resolves ``value``, ``secretKeyRef``, ``configMapKeyRef`` and ``fieldRef`` (metadata.name /
  metadata.namespace) from the API, as the kubelet would;
- writes Secret / ConfigMap volumes into a directory of its own and rewrites environment values that
  point into their mount paths (the worker's TLS CA file), since processes have no mount namespace;
- gives every replica its own free metrics port and its own consumer name (the runtime does this);
- follows replica and template changes (a changed template restarts the replicas, like a rollout);
- writes ``status.replicas / readyReplicas / availableReplicas / updatedReplicas /
  observedGeneration`` through the Deployment's status subresource;
- stops the processes with SIGTERM and the pod's ``terminationGracePeriodSeconds``.

It does not pull images: the worker code is this checkout's, and the handler modules must be
importable from ``python_path`` (the example handlers by default). Everything else a kubelet does
(probes restarting containers, resource limits, security contexts) is out of its scope.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from streampipe_operator.kube.deployments import COMPONENT, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGED_BY
from streampipe_operator.local.processes import LocalRuntime, ReplicaSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_HANDLERS = ROOT / "examples" / "handlers" / "src"
WORKER_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT}"

log = logging.getLogger("tests.pod_runner")


class PodRunnerError(RuntimeError):
    pass


class PodRunner:
    """Runs the replicas of worker Deployments in one namespace as local processes."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        run_dir: Path,
        *,
        python_path: Sequence[Path] = (EXAMPLE_HANDLERS,),
        poll_interval: float = 0.2,
        extra_env: Mapping[str, str] | None = None,
    ) -> None:
        self.namespace = namespace
        self.run_dir = run_dir
        self.python_path = [str(p) for p in python_path]
        self.poll_interval = poll_interval
        self.extra_env = dict(extra_env or {})
        self._api_client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        self._core = k8s.CoreV1Api(self._api_client)
        self._apps = k8s.AppsV1Api(self._api_client)
        self._runtime = LocalRuntime(run_dir / "replicas")
        self._specs: dict[str, ReplicaSpec] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"pod-runner-{namespace}", daemon=True)
        self.errors: list[str] = []

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> PodRunner:
        self._thread.start()
        return self

    def stop(self, grace: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(30)
        self._runtime.close(grace=grace)
        self._api_client.close()

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what tests look at ----------------------------------------------------------------------------

    def running(self, deployment: str) -> int:
        """Replica processes alive for ``deployment`` (not counting ones being terminated)."""
        replica_set = self._runtime.get(deployment)
        return replica_set.status().running if replica_set else 0

    def ready(self, deployment: str) -> int:
        replica_set = self._runtime.get(deployment)
        return replica_set.status().ready if replica_set else 0

    def pids(self, deployment: str) -> list[int]:
        replica_set = self._runtime.get(deployment)
        if not replica_set:
            return []
        return [r.pid for r in replica_set.status().replicas if r.pid is not None and r.phase == "running"]

    def logs(self, deployment: str) -> str:
        """Everything the replicas of ``deployment`` wrote (for assertion messages)."""
        replica_set = self._runtime.get(deployment)
        if not replica_set:
            return ""
        texts = []
        for replica in replica_set.status().replicas:
            with contextlib.suppress(OSError):
                texts.append(f"--- {replica.name}\n{replica.log_path.read_text(errors='replace')[-4000:]}")
        return "\n".join(texts)

    # --- the loop --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception as exc:  # keep running: a test reads self.errors when something is off
                message = f"{type(exc).__name__}: {exc}"
                if not self.errors or self.errors[-1] != message:
                    self.errors.append(message)
                    log.warning("pod runner: %s", message)
            self._stop.wait(self.poll_interval)

    def sync_once(self) -> None:
        deployments = self._apps.list_namespaced_deployment(
            self.namespace, label_selector=WORKER_SELECTOR
        ).items
        seen = set()
        for deployment in deployments:
            name = deployment.metadata.name
            seen.add(name)
            spec = self._replica_spec(deployment)
            replica_set = self._runtime.get(name)
            if replica_set is None:
                replica_set = self._runtime.replica_set(spec)
            elif self._specs.get(name) != spec:
                replica_set.update(spec)
            self._specs[name] = spec
            wanted = 1 if deployment.spec.replicas is None else int(deployment.spec.replicas)
            if replica_set.desired != wanted:
                replica_set.scale(wanted, grace=spec.termination_grace)
            self._write_status(deployment, replica_set.status())
        for name in [n for n in self._specs if n not in seen]:
            self._runtime.remove(name, grace=self._specs[name].termination_grace)
            del self._specs[name]

    # --- Deployment -> process ----------------------------------------------------------------------------

    def _replica_spec(self, deployment: Any) -> ReplicaSpec:
        pod = deployment.spec.template.spec
        container = next((c for c in pod.containers if c.name == "worker"), pod.containers[0])
        env = self._container_env(deployment, container)
        mounts = self._materialize_volumes(deployment.metadata.name, pod, container)
        for key, value in list(env.items()):
            for mount_path, local_dir in mounts.items():
                if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                    env[key] = str(local_dir) + value[len(mount_path.rstrip("/")) :]
        env["PYTHONPATH"] = os.pathsep.join([*self.python_path, os.environ.get("PYTHONPATH", "")])
        env.update(self.extra_env)
        grace = pod.termination_grace_period_seconds
        return ReplicaSpec.for_worker(
            deployment.metadata.name,
            env,
            termination_grace=float(30 if grace is None else grace),
            restart_backoff=0.2,
            restart_backoff_max=2.0,
        )

    def _container_env(self, deployment: Any, container: Any) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in container.env_from or ():
            data = self._source_data(source.secret_ref, source.config_map_ref)
            env.update({f"{source.prefix or ''}{k}": v for k, v in data.items()})
        for var in container.env or ():
            if var.value_from is None:
                env[var.name] = var.value or ""
                continue
            ref = var.value_from
            if ref.secret_key_ref is not None:
                value = self._key(self._secret(ref.secret_key_ref.name), ref.secret_key_ref, var.name)
            elif ref.config_map_key_ref is not None:
                value = self._key(
                    self._config_map(ref.config_map_key_ref.name), ref.config_map_key_ref, var.name
                )
            elif ref.field_ref is not None:
                value = {
                    "metadata.name": deployment.metadata.name,
                    "metadata.namespace": self.namespace,
                }.get(ref.field_ref.field_path, "")
            else:
                raise PodRunnerError(f"env {var.name}: unsupported valueFrom in the test pod runner")
            if value is not None:
                env[var.name] = value
        return env

    @staticmethod
    def _key(data: Mapping[str, str], ref: Any, var: str) -> str | None:
        if ref.key in data:
            return data[ref.key]
        if ref.optional:
            return None
        raise PodRunnerError(f"env {var}: key {ref.key!r} missing in {ref.name!r}")

    def _secret(self, name: str) -> dict[str, str]:
        secret = self._core.read_namespaced_secret(name, self.namespace)
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def _config_map(self, name: str) -> dict[str, str]:
        return dict(self._core.read_namespaced_config_map(name, self.namespace).data or {})

    def _source_data(self, secret_ref: Any, config_map_ref: Any) -> dict[str, str]:
        try:
            if secret_ref is not None:
                return self._secret(secret_ref.name)
            if config_map_ref is not None:
                return self._config_map(config_map_ref.name)
        except ApiException as exc:
            optional = (secret_ref or config_map_ref).optional
            if exc.status == 404 and optional:
                return {}
            raise
        return {}

    def _materialize_volumes(self, deployment: str, pod: Any, container: Any) -> dict[str, Path]:
        """Secret and ConfigMap volumes as files under run_dir; returns mountPath -> local dir."""
        volumes = {v.name: v for v in pod.volumes or ()}
        mounts: dict[str, Path] = {}
        for mount in container.volume_mounts or ():
            volume = volumes.get(mount.name)
            if volume is None:
                continue
            if volume.secret is not None:
                data = self._secret(volume.secret.secret_name)
                items = volume.secret.items
            elif volume.config_map is not None:
                data = self._config_map(volume.config_map.name)
                items = volume.config_map.items
            else:
                continue  # emptyDir and friends: the process has its own /tmp
            target = self.run_dir / "volumes" / deployment / mount.name
            target.mkdir(parents=True, exist_ok=True)
            selected = {item.key: item.path for item in items} if items else {k: k for k in data}
            for key, path in selected.items():
                (target / path).parent.mkdir(parents=True, exist_ok=True)
                (target / path).write_text(data[key])
            mounts[mount.mount_path] = target
        return mounts

    # --- status -------------------------------------------------------------------------------------------

    def _write_status(self, deployment: Any, observed: Any) -> None:
        current = deployment.status
        status = {
            "observedGeneration": deployment.metadata.generation,
            "replicas": observed.running + observed.terminating,
            "updatedReplicas": observed.running,
            "readyReplicas": observed.ready,
            "availableReplicas": observed.ready,
        }
        unchanged = current is not None and (
            current.observed_generation == status["observedGeneration"]
            and (current.replicas or 0) == status["replicas"]
            and (current.updated_replicas or 0) == status["updatedReplicas"]
            and (current.ready_replicas or 0) == status["readyReplicas"]
            and (current.available_replicas or 0) == status["availableReplicas"]
        )
        if unchanged:
            return
        try:
            self._apps.patch_namespaced_deployment_status(
                deployment.metadata.name, self.namespace, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:  # deleted meanwhile
                raise


@contextlib.contextmanager
def running_pod_runner(kubeconfig: Path, namespace: str, run_dir: Path, **kwargs: Any) -> Iterator[PodRunner]:
    runner = PodRunner(kubeconfig, namespace, run_dir, **kwargs).start()
    try:
        yield runner
    finally:
        runner.stop()
