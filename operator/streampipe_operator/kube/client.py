"""The operator's side of the Kubernetes API: Secrets, worker Deployments, ``/scale``, status, Events.

An async adapter over the official ``kubernetes`` client. That client blocks, so every call runs in a
small thread pool of its own: the event loop (kopf's watches, every pipeline's reconcile loop) never
waits on a socket. Replies are plain dicts (camelCase, as the API server sends them), never the
client's model classes, so the rest of the operator reads the same shapes kopf hands it.

Every failure leaves as :class:`KubeError` with the API server's own message and HTTP status.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kubernetes import client
from kubernetes import config as kube_config

from streampipe_operator import api
from streampipe_operator.kube.status import EventType

REPORTING_COMPONENT = "streampipe-operator"
# core/v1 Events have no hard limit; events.k8s.io/v1 refuses notes above 1 kB: keep within both.
MAX_EVENT_MESSAGE = 1024

_T = TypeVar("_T")


class KubeError(Exception):
    """A Kubernetes API call failed; ``status`` is the HTTP status (0 when the server was not reached)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: already exists, or a write lost a race."""
        return self.status == 409


class SecretMissingError(KubeError):
    """The Secret, or the key in it, does not exist."""


def load_configuration(kubeconfig: Path | None = None) -> client.Configuration:
    """Credentials like kubectl finds them: ``kubeconfig`` if given, the in-cluster service account
    inside a pod, else ``$KUBECONFIG`` / ``~/.kube/config``."""
    configuration = client.Configuration()
    # The config loaders carry no annotations.
    config: Any = kube_config
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    return configuration


def resource_served(configuration: client.Configuration) -> bool:
    """Whether the API server serves ``streampipelines.streampipe.dev/v1alpha1`` (the CRD is installed).

    Asks discovery, which every authenticated client may read; a failure to reach the server raises
    :class:`KubeError`.
    """
    api_client: Any = client.ApiClient(configuration)
    doing = "asking the API server which resources it serves"
    try:
        reply: Any = client.CustomObjectsApi(api_client).get_api_resources(
            api.GROUP, api.VERSION, _preload_content=False, _request_timeout=30
        )
    except client.exceptions.ApiException as exc:
        if exc.status == 404:
            return False
        raise _describe(exc, doing) from exc
    except Exception as exc:
        raise _describe(exc, doing) from exc
    finally:
        api_client.close()
    resources = json.loads(reply.data).get("resources", [])
    return any(resource.get("name") == api.PLURAL for resource in resources)


def connection_fields(configuration: client.Configuration) -> dict[str, Any]:
    """The server and credentials of ``configuration`` as kopf's ``ConnectionInfo`` fields, so kopf's
    watches and this adapter authenticate alike (whatever ``--kubeconfig`` or the pod provides)."""
    cfg: Any = configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    scheme, _, token = (header or "").rpartition(" ")
    return {
        "server": cfg.host,
        "ca_path": cfg.ssl_ca_cert,
        "insecure": not cfg.verify_ssl,
        "username": cfg.username or None,
        "password": cfg.password or None,
        "scheme": scheme or None,
        "token": token or None,
        "certificate_path": cfg.cert_file,
        "private_key_path": cfg.key_file,
    }


def _describe(exc: Exception, doing: str) -> KubeError:
    if isinstance(exc, client.exceptions.ApiException):
        message = exc.reason or "error"
        reason = ""
        try:
            status = json.loads(exc.body or "{}")
            message = status.get("message") or message
            reason = status.get("reason") or ""
        except (ValueError, AttributeError):
            pass
        return KubeError(f"{doing}: {message} (HTTP {exc.status})", status=exc.status or 0, reason=reason)
    return KubeError(f"{doing}: cannot reach the Kubernetes API ({exc or type(exc).__name__})")


class KubeClient(Protocol):
    """What the operator asks of the API server; :class:`KubeApi` is the implementation (unit tests
    drive the controller with a fake of this protocol)."""

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes: ...

    async def create_deployment(self, body: Mapping[str, Any]) -> dict[str, Any]: ...

    async def patch_deployment(
        self, namespace: str, name: str, operations: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]: ...

    async def delete_deployment(self, namespace: str, name: str) -> None: ...

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]: ...

    async def patch_pipeline_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    async def post_event(
        self, involved: Mapping[str, Any], type_: EventType, reason: str, message: str
    ) -> None: ...


def _body_of(call: Callable[[], Any]) -> bytes:
    return bytes(call().data or b"")


class KubeApi:
    """Async calls to the API server for the operator (thread-pooled ``kubernetes`` client)."""

    def __init__(self, configuration: client.Configuration, *, threads: int = 8) -> None:
        configuration.connection_pool_maxsize = max(threads, 4)
        self._client: Any = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._client)
        self._apps = client.AppsV1Api(self._client)
        self._custom = client.CustomObjectsApi(self._client)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kube-api")
        self.instance = socket.gethostname()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    async def _call(self, doing: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a client call in the pool; the reply's JSON body as a dict."""
        loop = asyncio.get_running_loop()
        call = functools.partial(function, *args, _preload_content=False, _request_timeout=30, **kwargs)
        try:
            # The body is read in the pool thread too: its connection goes back to urllib3's pool
            # before the thread takes the next call, so there are never more connections than threads
            # (read on the loop, a busy operator opened new TLS connections and discarded them).
            data = await loop.run_in_executor(self._pool, _body_of, call)
        except Exception as exc:
            raise _describe(exc, doing) from exc
        return json.loads(data) if data else {}

    # --- secrets -------------------------------------------------------------------------------------

    async def read_secret_key(self, namespace: str, name: str, key: str) -> bytes:
        """One key of a Secret, decoded; :class:`SecretMissingError` names what is missing."""
        try:
            secret = await self._call(
                f"reading Secret {namespace}/{name}", self._core.read_namespaced_secret, name, namespace
            )
        except KubeError as exc:
            if exc.not_found:
                raise SecretMissingError(
                    f"Secret {namespace}/{name} not found; create it or fix the name in the StreamPipeline",
                    status=404,
                ) from exc
            raise
        data: Mapping[str, str] = secret.get("data") or {}
        if key not in data:
            keys = ", ".join(sorted(data)) or "none"
            raise SecretMissingError(
                f"Secret {namespace}/{name} has no key {key!r} (keys: {keys}); fix the key in the "
                f"StreamPipeline or add it to the Secret",
                status=404,
            )
        return base64.b64decode(data[key])

    # --- deployments ---------------------------------------------------------------------------------

    async def list_deployments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        reply = await self._call(
            f"listing Deployments in {namespace}",
            self._apps.list_namespaced_deployment,
            namespace,
            label_selector=label_selector,
        )
        items: list[dict[str, Any]] = reply.get("items") or []
        return items

    async def create_deployment(self, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"]["namespace"]
        name = body["metadata"]["name"]
        created: dict[str, Any] = await self._call(
            f"creating Deployment {namespace}/{name}",
            self._apps.create_namespaced_deployment,
            namespace,
            dict(body),
            field_manager=REPORTING_COMPONENT,
        )
        return created

    async def patch_deployment(
        self, namespace: str, name: str, operations: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """A JSON patch (RFC 6902) of a Deployment."""
        patched: dict[str, Any] = await self._call(
            f"patching Deployment {namespace}/{name}",
            self._apps.patch_namespaced_deployment,
            name,
            namespace,
            [dict(op) for op in operations],
            field_manager=REPORTING_COMPONENT,
            _content_type="application/json-patch+json",
        )
        return patched

    async def delete_deployment(self, namespace: str, name: str) -> None:
        """Delete a Deployment (its pods go with it, in the background); absent is fine."""
        try:
            await self._call(
                f"deleting Deployment {namespace}/{name}",
                self._apps.delete_namespaced_deployment,
                name,
                namespace,
                propagation_policy="Background",
            )
        except KubeError as exc:
            if not exc.not_found:
                raise

    async def scale_deployment(self, namespace: str, name: str, replicas: int) -> dict[str, Any]:
        """Set replicas through the ``/scale`` subresource; returns the Scale object."""
        scale: dict[str, Any] = await self._call(
            f"scaling Deployment {namespace}/{name} to {replicas}",
            self._apps.patch_namespaced_deployment_scale,
            name,
            namespace,
            {"spec": {"replicas": replicas}},
            field_manager=REPORTING_COMPONENT,
            _content_type="application/merge-patch+json",
        )
        return scale

    # --- the StreamPipeline --------------------------------------------------------------------------

    async def patch_pipeline_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Replace ``status`` whole (a JSON patch ``add /status``): what is not in ``status`` goes."""
        await self._call(
            f"writing status of StreamPipeline {namespace}/{name}",
            self._custom.patch_namespaced_custom_object_status,
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            name,
            [{"op": "add", "path": "/status", "value": dict(status)}],
            field_manager=REPORTING_COMPONENT,
            _content_type="application/json-patch+json",
        )

    async def post_event(
        self,
        involved: Mapping[str, Any],
        type_: EventType,
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event about ``involved`` (``apiVersion``, ``kind``, ``namespace``, ``name``, ``uid``)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = involved["namespace"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": dict(involved),
            "type": type_,
            "reason": reason,
            "message": message[:MAX_EVENT_MESSAGE],
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._call(
            f"posting Event {reason} in {namespace}", self._core.create_namespaced_event, namespace, body
        )
