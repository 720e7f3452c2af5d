"""How the operator reaches a pipeline's server: credentials from Secrets, one client per server.

The operator connects the way the pipeline's workers do (the worker's ``ConnectionSettings`` and its
one client factory), with the password and ACL user read from ``spec.redis.auth``'s Secret and the CA
certificate from ``spec.redis.tls``'s Secret (written to a private temporary file, because the TLS
stack reads CA files). A client is reused until the spec or the Secrets' contents change; Secrets are
read again every ``secret_refresh`` seconds and after every failure, so a rotated password is picked
up without a restart.

Pipelines whose connection settings are the same (the same server, user, password and TLS settings)
share one client and its connection pool (:class:`SharedClients`): 1,000 pipelines on one server hold
a handful of connections, not 1,000. A pipeline whose settings change or that fails lets go of its
reference; the client is closed when the last pipeline lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from streampipe_operator import api
from streampipe_operator.kube.client import KubeClient
from streampipe_operator.streams.admin import RedisAdmin, forget_server
from streampipe_worker.connection import AsyncClient, ConnectionSettings, create_async_client

log = logging.getLogger("streampipe.operator")

CLIENT_NAME = "streampipe-operator"


async def connection_settings(
    kube: KubeClient, namespace: str, uid: str, spec: api.RedisSpec, *, socket_timeout: float
) -> ConnectionSettings:
    """The settings to reach ``spec``'s server, with the credentials its Secrets hold."""
    username = password = None
    if spec.auth is not None:
        secret = spec.auth.secret_name
        password = SecretStr(
            (await kube.read_secret_key(namespace, secret, spec.auth.password_key)).decode("utf-8")
        )
        if spec.auth.username_key is not None:
            username = (await kube.read_secret_key(namespace, secret, spec.auth.username_key)).decode("utf-8")
    ca_file = None
    if spec.tls is not None and spec.tls.ca_secret_name is not None:
        ca = await kube.read_secret_key(namespace, spec.tls.ca_secret_name, spec.tls.ca_key)
        ca_file = _private_file(f"{uid}-ca.crt", ca)
    return ConnectionSettings(
        url=spec.url,
        mode=spec.mode,
        sentinel_master=spec.sentinel.master_name if spec.sentinel is not None else None,
        username=username,
        password=password,
        tls_ca_file=ca_file,
        tls_insecure_skip_verify=spec.tls.insecure_skip_verify if spec.tls is not None else False,
        client_name=CLIENT_NAME,
        socket_timeout=socket_timeout,
    )


def _private_file(name: str, content: bytes) -> Path:
    directory = Path(tempfile.gettempdir()) / "streampipe-operator"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / name
    if not path.exists() or path.read_bytes() != content:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
    return path


def fingerprint(settings: ConnectionSettings) -> str:
    """Changes whenever anything that makes a connection changes (the CA file's content included)."""
    digest = hashlib.sha256(settings.model_dump_json(exclude={"password"}).encode())
    if settings.password is not None:
        digest.update(settings.password.get_secret_value().encode())
    if settings.tls_ca_file is not None:
        digest.update(settings.tls_ca_file.read_bytes())
    return digest.hexdigest()


# Passes that may talk to one server at once. A pass sends its commands one after another, so this
# also bounds the connections a shared client opens: without it, 1,000 pipelines made Ready together
# ran past redis-py's pool limit (100) and reported the server unreachable.
PASSES_PER_SERVER = 32
# Seconds a server's memory and persistence settings, read by one pipeline's pass, serve the others.
SERVER_STATE_TTL = 1.0


class SharedClients:
    """One client (and connection pool) per distinct set of connection settings, counted by users,
    with a semaphore of ``passes`` that bounds the passes using it at once."""

    def __init__(self, passes: int = PASSES_PER_SERVER) -> None:
        self.passes = passes
        self._clients: dict[str, tuple[AsyncClient, asyncio.Semaphore, int]] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def acquire(self, key: str, settings: ConnectionSettings) -> tuple[AsyncClient, asyncio.Semaphore]:
        found = self._clients.get(key)
        client, turns, users = found or (create_async_client(settings), asyncio.Semaphore(self.passes), 0)
        self._clients[key] = (client, turns, users + 1)
        return client, turns

    async def release(self, key: str) -> None:
        found = self._clients.get(key)
        if found is None:
            return
        client, turns, users = found
        if users > 1:
            self._clients[key] = (client, turns, users - 1)
            return
        del self._clients[key]
        await _close(client)


async def _close(client: AsyncClient) -> None:
    try:
        await client.aclose()
    except Exception as exc:  # closing a broken connection may fail; it is gone either way
        log.debug("closing the Redis client failed: %s", exc)


class PipelineConnection:
    """The client and admin adapter of one pipeline, rebuilt when its settings change. With ``shared``
    the client comes from (and goes back to) that registry; without, it is the pipeline's own."""

    def __init__(
        self,
        kube: KubeClient,
        namespace: str,
        uid: str,
        *,
        socket_timeout: float,
        secret_refresh: float,
        shared: SharedClients | None = None,
    ):
        self.kube = kube
        self.namespace = namespace
        self.uid = uid
        self.socket_timeout = socket_timeout
        self.secret_refresh = secret_refresh
        self.shared = shared
        self._client: AsyncClient | None = None
        self._turns: asyncio.Semaphore | None = None
        self._admin: RedisAdmin | None = None
        self._fingerprint = ""
        self._spec: api.RedisSpec | None = None
        self._read_at = 0.0

    async def admin(self, spec: api.RedisSpec) -> RedisAdmin:
        """The adapter for ``spec``'s server; reads the Secrets when due. Raises ``KubeError`` (e.g.
        ``SecretMissingError``) when they cannot be read."""
        due = time.monotonic() - self._read_at >= self.secret_refresh
        if self._admin is not None and spec == self._spec and not due:
            return self._admin
        settings = await connection_settings(
            self.kube, self.namespace, self.uid, spec, socket_timeout=self.socket_timeout
        )
        self._read_at = time.monotonic()
        self._spec = spec
        key = fingerprint(settings)
        if self._admin is None or key != self._fingerprint:
            await self.close()
            if self.shared is not None:
                self._client, self._turns = self.shared.acquire(key, settings)
            else:
                self._client = create_async_client(settings)
            # One server-state reading a second serves every pipeline of a shared client.
            self._admin = RedisAdmin(self._client, server_state_ttl=SERVER_STATE_TTL)
            self._fingerprint = key
        assert self._admin is not None
        return self._admin

    def turn(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Hold while a pass uses the client: a shared client serves a bounded number at once."""
        return self._turns if self._turns is not None else contextlib.nullcontext()

    async def reset(self) -> None:
        """Forget the client after a failure: the next call reads the Secrets and reconnects (a shared
        client stays with its other users; what was cached about its server is asked again)."""
        if self._client is not None:
            forget_server(self._client)
        await self.close()
        self._spec = None

    async def close(self) -> None:
        client, self._client, self._admin, self._turns = self._client, None, None, None
        key, self._fingerprint = self._fingerprint, ""
        if client is None:
            return
        if self.shared is not None:
            await self.shared.release(key)
        else:
            await _close(client)
