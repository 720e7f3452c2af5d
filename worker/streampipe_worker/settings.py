"""The worker's environment contract: every ``STREAMPIPE_*`` variable, in one model.

The operator renders a worker Deployment's ``env`` from this model (``WorkerSettings.env_name`` and
``render_env``), so a variable's name is written down here and nowhere else. The password is its own
field so that the operator can render it as a ``secretKeyRef`` instead of a literal value.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PlainSerializer,
    SecretStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from streampipe_worker import durations
from streampipe_worker.durations import format_duration
from streampipe_worker.entry_ids import EntryId
from streampipe_worker.keys import cluster_key_problem
from streampipe_worker.partitions import MAX_PARTITIONS, PartitionLayout

ENV_PREFIX = "STREAMPIPE_"
MIN_LEASE_TTL = timedelta(seconds=1)
MAX_LEASE_TTL = timedelta(minutes=5)


def parse_duration(value: object) -> timedelta:
    """A duration variable: ``"250ms"``, ``"1.5s"``, ``" 5m "``, ``"1h30m"`` -> timedelta.

    The manifest syntax, also with decimal numbers; bare numbers are refused (which unit?). A
    ``timedelta`` passes through: the operator renders the env from those.
    """
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration string such as 250ms, 1s, 5m or 1h, got {value!r}")
    return durations.parse_duration(value.strip(), strict=False)


def redact_url(url: str) -> str:
    """The URL with the password of its userinfo replaced by ``***``: for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, hosts = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{hosts}"


def parse_group_position(value: str) -> str:
    """``STREAMPIPE_CREATE_GROUP``: ``$`` (new entries only), ``0`` (the whole stream) or an entry ID
    (``1700000000000-0``; a bare ``5`` means ``5-0``), as XGROUP CREATE takes it."""
    text = value.strip()
    if text in ("$", "0"):
        return text
    try:
        return str(EntryId.parse(text))
    except ValueError:
        raise ValueError(
            "expected $ (new entries only), 0 (the whole stream) or a stream entry ID such as 1700000000000-0"
        ) from None


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


class SettingsError(Exception):
    """Every problem found in the environment, as one message a person can act on."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"  {name}: {why}" for name, why in problems]
        super().__init__("invalid worker settings (fix these environment variables):\n" + "\n".join(lines))


class WorkerSettings(BaseSettings):
    """Everything a worker process reads from its environment (prefix ``STREAMPIPE_``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        case_sensitive=False,
        env_ignore_empty=True,
        validate_default=True,
    )

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="redis:// or rediss:// (TLS). Sentinel mode: the sentinels, comma-separated host:port",
    )
    redis_mode: Literal["standalone", "sentinel", "cluster"] = Field(
        default="standalone", description="How to reach the data: one server, via Sentinel, or a Cluster"
    )
    sentinel_master: str | None = Field(default=None, description="Sentinel master name (sentinel mode)")
    redis_username: str | None = Field(default=None, description="ACL user name")
    redis_password: SecretStr | None = Field(
        default=None, description="Password (ACL user's, or requirepass); render it from a Secret"
    )
    tls_ca_file: Path | None = Field(default=None, description="CA bundle that signed the server certificate")
    tls_insecure_skip_verify: bool = Field(
        default=False, description="Accept any server certificate (testing only)"
    )
    stream: str = Field(
        min_length=1, description="The stream this worker consumes; with PARTITIONS, their base name"
    )
    partitions: int = Field(
        default=0,
        ge=0,
        le=MAX_PARTITIONS,
        description="0: STREAM is one stream key. N: STREAM is the base name of N partition streams "
        "(docs/partitions.md), and this worker reads all of them",
    )
    ordering: Literal["None", "PerKey"] = Field(
        default="None",
        description="None: every worker reads every partition. PerKey: each partition is read by one "
        "worker at a time (a fenced lease) and each key's entries are handled in order; needs PARTITIONS",
    )
    partition_key: str | None = Field(
        default=None,
        min_length=1,
        description="With PerKey: the entry field whose value is the key; unset = each partition is one "
        "key sequence",
    )
    lease_ttl: Duration = Field(
        default=timedelta(seconds=10),
        description="With PerKey: time to live of a partition's lease (renewed every third of it)",
    )
    group: str = Field(min_length=1, description="Its consumer group (created by the operator)")
    consumer: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        description="Consumer name inside the group; the pod name by default (host name)",
    )
    handler: str = Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$",
        description="module:attribute of the handler function or Router",
    )
    batch_size: int = Field(default=100, ge=1, le=10_000, description="Entries per XREADGROUP")
    concurrency: int = Field(default=8, ge=1, le=10_000, description="In-flight async handler calls")
    block: Duration = Field(default=timedelta(seconds=2), description="XREADGROUP BLOCK when idle")
    max_deliveries: int = Field(default=3, ge=1, description="Attempts before an entry goes to the DLQ")
    backoff_initial: Duration = Field(default=timedelta(seconds=1), description="Wait before the 1st retry")
    backoff_multiplier: float = Field(default=2.0, ge=1.0, description="Growth of the wait per attempt")
    backoff_max: Duration = Field(default=timedelta(minutes=5), description="Cap of the wait")
    claim_idle: Duration = Field(
        default=timedelta(seconds=60),
        description="Idle time after which a silent consumer's entries are taken",
    )
    dead_letter_stream: str | None = Field(default=None, description="DLQ stream; default <stream>:dlq")
    dedupe_ttl: Duration | None = Field(
        default=None, description="Keep a processed marker this long; unset = no dedupe"
    )
    create_group: Annotated[str, AfterValidator(parse_group_position)] | None = Field(
        default=None,
        description="Create the group at start (XGROUP CREATE ... MKSTREAM) at $, 0 or an entry ID, and "
        "again if it vanishes; unset = wait for the operator to create it",
    )
    metrics_port: int = Field(default=9090, ge=0, le=65535, description="/metrics /healthz /readyz; 0 = off")
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104 - the kubelet probes the pod IP, not loopback
        min_length=1,
        description="IPv4 address the metrics and probe server binds; 127.0.0.1 keeps it on this host",
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format")
    shutdown_grace: Duration = Field(
        default=timedelta(seconds=25),
        description="On SIGTERM, how long in-flight handlers may run (keep below the pod's grace period)",
    )

    @property
    def dead_letter(self) -> str:
        """The dead-letter stream actually used (of an unpartitioned stream)."""
        return self.dead_letter_stream or f"{self.stream}:dlq"

    @property
    def layout(self) -> PartitionLayout | None:
        """The partition layout, or None for one stream key."""
        if not self.partitions:
            return None
        return PartitionLayout(self.stream, self.partitions, key=self.partition_key)

    def for_partition(self, index: int) -> WorkerSettings:
        """The settings of one partition's consumer: its stream and dead-letter stream."""
        layout = self.layout
        if layout is None:
            raise ValueError("not a partitioned stream (STREAMPIPE_PARTITIONS is 0)")
        return self.model_copy(
            update={
                "stream": layout.stream(index),
                "dead_letter_stream": layout.dead_letter(index),
                "partitions": 0,
            }
        )

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a field: ``env_name("batch_size") == "STREAMPIPE_BATCH_SIZE"``."""
        if field not in cls.model_fields:
            raise KeyError(f"WorkerSettings has no field {field!r}")
        return f"{ENV_PREFIX}{field.upper()}"

    def problems(self) -> list[tuple[str, str]]:
        """Rules that span several variables (each field is already valid on its own)."""
        found: list[tuple[str, str]] = []
        name = self.env_name
        if self.redis_mode == "sentinel" and not self.sentinel_master:
            found.append((name("sentinel_master"), "required when STREAMPIPE_REDIS_MODE=sentinel"))
        if not self.redis_url.startswith(("redis://", "rediss://")):
            found.append(
                (name("redis_url"), f"{redact_url(self.redis_url)!r} must start with redis:// or rediss://")
            )
        if self.backoff_max < self.backoff_initial:
            found.append(
                (
                    name("backoff_max"),
                    f"{format_duration(self.backoff_max)} is below "
                    f"STREAMPIPE_BACKOFF_INITIAL={format_duration(self.backoff_initial)}",
                )
            )
        if self.claim_idle < timedelta(milliseconds=100):
            found.append(
                (name("claim_idle"), "must be at least 100ms (leases are renewed at a quarter of it)")
            )
        if not MIN_LEASE_TTL <= self.lease_ttl <= MAX_LEASE_TTL:
            found.append(
                (
                    name("lease_ttl"),
                    f"{format_duration(self.lease_ttl)} is outside {format_duration(MIN_LEASE_TTL)}.."
                    f"{format_duration(MAX_LEASE_TTL)}",
                )
            )
        if self.ordering == "PerKey" and not self.partitions:
            found.append(
                (
                    name("ordering"),
                    "PerKey needs STREAMPIPE_PARTITIONS >= 1: keys are ordered within a partition, "
                    "which one worker owns at a time",
                )
            )
        if self.tls_ca_file is not None and not self.tls_ca_file.is_file():
            found.append((name("tls_ca_file"), f"{self.tls_ca_file} is not a readable file"))
        if self.partitions:
            return found + self._partition_problems()
        if self.dead_letter == self.stream:
            found.append((name("dead_letter_stream"), "must differ from STREAMPIPE_STREAM"))
        if self.redis_mode == "cluster":
            problem = cluster_key_problem(self.stream, self.dead_letter)
            if problem:
                found.append((name("stream"), problem))
        return found

    def _partition_problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        try:
            PartitionLayout(self.stream, self.partitions)
        except ValueError as exc:
            found.append((self.env_name("stream"), str(exc)))
        if self.dead_letter_stream:
            found.append(
                (
                    self.env_name("dead_letter_stream"),
                    "leave it unset with STREAMPIPE_PARTITIONS: each partition has its own "
                    "dead-letter stream, {<stream>:<i>}:dlq",
                )
            )
        return found


def _env_problem(error: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, str]:
    location = error.get("loc") or ("",)
    field = str(location[0])
    env = WorkerSettings.env_name(field) if field in WorkerSettings.model_fields else field or "settings"
    if error.get("type") == "missing":
        return env, "required, not set"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    raw = {k.upper(): v for k, v in environ.items()}.get(env)
    if raw is not None and field != "redis_password":
        return env, f"{redact_url(raw) if field == 'redis_url' else raw!r}: {message}"
    return env, message


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkerSettings:
    """Read and check the settings; raise ``SettingsError`` naming every bad variable at once.

    ``environ`` defaults to the process environment; ``overrides`` are field values that win over it.
    """
    import os

    env = dict(os.environ if environ is None else environ)
    try:
        settings = WorkerSettings(**overrides) if environ is None else _settings_from(env, overrides)
    except ValidationError as exc:
        problems = [_env_problem(error, env) for error in exc.errors()]
        raise SettingsError(sorted(set(problems))) from None
    problems = settings.problems()
    if problems:
        raise SettingsError(problems)
    return settings


def _settings_from(environ: Mapping[str, str], overrides: Mapping[str, Any]) -> WorkerSettings:
    """Settings from an explicit mapping instead of os.environ (tests, the operator's dry runs)."""
    values: dict[str, Any] = {}
    for field in WorkerSettings.model_fields:
        raw = environ.get(WorkerSettings.env_name(field))
        if raw not in (None, ""):
            values[field] = raw
    values.update(overrides)
    # Values come from the mapping only; the process environment must not leak in.
    return WorkerSettings.model_validate(values)


@functools.cache
def _field_adapter(field: str) -> TypeAdapter[Any]:
    """The validator of one field, built once (building one costs about 0.1 ms: the operator renders
    every worker Deployment's env on every pass)."""
    info = WorkerSettings.model_fields[field]
    if not info.metadata:
        plain: Any = info.annotation
        return TypeAdapter(plain)
    annotated: Any = Annotated.__class_getitem__((info.annotation, *info.metadata))  # type: ignore[attr-defined]
    return TypeAdapter(annotated)


def render_env(values: Mapping[str, Any]) -> dict[str, str]:
    """Field values -> ``{ENV_NAME: string}``, the exact strings the worker reads back.

    Each value is checked against its field first (a ``ValueError`` names the variable), so the
    operator cannot render an env the worker would refuse. Durations may be given as ``timedelta`` or
    as strings (``"1s"``). ``None`` values are left out. The password is rendered as plain text only
    if passed: the operator should pass it as a ``secretKeyRef`` under ``env_name("redis_password")``.
    """
    rendered: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for field, value in values.items():
        if value is None:
            continue
        try:
            env = WorkerSettings.env_name(field)
        except KeyError as exc:
            problems.append((field, str(exc.args[0])))
            continue
        try:
            checked = _field_adapter(field).validate_python(value)
        except ValidationError as exc:
            problems.append((env, "; ".join(str(e["msg"]) for e in exc.errors())))
            continue
        rendered[env] = _to_env_string(checked)
    if problems:
        raise SettingsError(problems)
    return rendered


def _to_env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)
