"""Which server and streams a data command (``status``, ``peek``, ``dlq``, ``produce``, ``up``) works on.

A command names its target with a StreamPipeline file (``-f pipeline.yaml``: its stream, dead-letter
stream, mode and url), with ``--redis-url`` and ``--stream``, or with both (the options win: a file
written for the cluster usually names a server the laptop cannot reach). Credentials that a pod gets
from Secrets are not read from Kubernetes; put them in ``--redis-url`` (``redis://user:pass@host``).

Exit codes shared by these commands: 2 when the input is wrong (unreadable or invalid file, missing
or contradictory options, bad event JSON): fix the command line. 1 when the server or the pipeline's
state stops the command (unreachable, refused credentials, stream or group missing, entry not found).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import redis.exceptions
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from streampipe_operator import api
from streampipe_operator.api.validation import check_file, errors_of, render_text, validate_files
from streampipe_worker.connection import ConnectionSettings, parse_url
from streampipe_worker.partitions import PartitionLayout

EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandError(Exception):
    """A command cannot go on; ``str()`` is the message for the person, ``exit_code`` 1 or 2."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(CommandError):
    """The command line or the file is wrong (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


class Target(BaseModel):
    """A server and the pipeline's keys on it."""

    model_config = ConfigDict(frozen=True)

    redis_url: str
    mode: Literal["standalone", "sentinel", "cluster"] = "standalone"
    sentinel_master: str | None = None
    stream: str
    dead_letter: str
    pipeline: api.StreamPipeline | None = None
    partitions: int = 0  # >0: ``stream`` is the base name of this many partitions (docs/partitions.md)

    def layout(self, key: str | None = None) -> PartitionLayout | None:
        """The partition layout (routing by the ``key`` field), or None for one stream."""
        return PartitionLayout(self.stream, self.partitions, key) if self.partitions else None

    def partition_targets(self) -> list[Target]:
        """One target per partition: its stream and its dead-letter stream."""
        layout = self.layout()
        if layout is None:
            return [self]
        return [
            self.model_copy(
                update={"stream": layout.stream(i), "dead_letter": layout.dead_letter(i), "partitions": 0}
            )
            for i in range(layout.count)
        ]

    def connection_settings(self, client_name: str = "streampipe-cli") -> ConnectionSettings:
        """Settings for the worker's client factory (the one way to build clients)."""
        return ConnectionSettings(
            url=self.redis_url, mode=self.mode, sentinel_master=self.sentinel_master, client_name=client_name
        )


def selected_partitions(target: Target, partition: int | None) -> list[Target]:
    """The targets a dead-letter command works on: the one stream, every partition, or ``partition``."""
    if not target.partitions:
        if partition is not None:
            raise UsageError("--partition goes with --partitions")
        return [target]
    parts = target.partition_targets()
    if partition is None:
        return parts
    if partition >= len(parts):
        raise UsageError(f"--partition {partition}: the partitions are 0..{len(parts) - 1}")
    return [parts[partition]]


def load_pipeline(path: Path) -> api.StreamPipeline:
    """The one StreamPipeline in ``path``; :class:`UsageError` with the validator's words otherwise."""
    report = check_file(path)
    if report.unreadable is not None:
        raise UsageError(f"{path}: cannot read: {report.unreadable}")
    if not report.valid:
        raise UsageError(render_text(validate_files([path])))
    documents = [
        document
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if isinstance(document, dict) and document.get("kind") == api.KIND
    ]
    if len(documents) != 1:
        names = ", ".join(str((d.get("metadata") or {}).get("name")) for d in documents)
        raise UsageError(f"{path}: holds {len(documents)} StreamPipelines ({names}); give a file with one")
    try:
        return api.StreamPipeline.model_validate(documents[0])
    except ValidationError as exc:  # check_file accepted it, so this is not expected; still say why
        raise UsageError(f"{path}: " + "; ".join(str(error) for error in errors_of(exc))) from None


def resolve_target(
    file: Path | None,
    *,
    redis_url: str | None,
    stream: str | None,
    dead_letter: str | None = None,
    partitions: int | None = None,
) -> Target:
    """The target from a file and/or options (see the module docstring). ``partitions``: the stream
    is the base name of that many partitions (``--partitions``, with ``--stream`` only)."""
    if partitions and file is None:
        if dead_letter is not None:
            raise UsageError("--dead-letter does not go with --partitions: each partition has its own")
        target = resolve_target(None, redis_url=redis_url, stream=stream)
        try:
            PartitionLayout(target.stream, partitions)
        except ValueError as exc:
            raise UsageError(f"--partitions: {exc}") from None
        return target.model_copy(update={"partitions": partitions, "dead_letter": ""})
    if file is None:
        missing = [flag for flag, value in (("--redis-url", redis_url), ("--stream", stream)) if not value]
        if missing:
            raise UsageError(
                f"name the pipeline with -f pipeline.yaml, or give {' and '.join(missing)} "
                "(e.g. --redis-url redis://127.0.0.1:6379/0 --stream '{orders}:events')"
            )
        assert redis_url is not None
        assert stream is not None
        _check_url(redis_url)
        return Target(redis_url=redis_url, stream=stream, dead_letter=dead_letter or f"{stream}:dlq")
    pipeline = load_pipeline(file)
    spec = pipeline.spec
    if redis_url is not None:
        _check_url(redis_url)
    if stream is not None and stream != spec.stream:
        raise UsageError(f"--stream {stream} contradicts {file} (its stream is {spec.stream}); give one")
    count = spec.partitions.count if spec.partitions is not None else 0
    if partitions and partitions != count:
        raise UsageError(
            f"--partitions {partitions} contradicts {file} ("
            + (f"it has {count} partitions" if count else "it has no partitions")
            + "); give one"
        )
    if count and dead_letter is not None:
        raise UsageError(f"--dead-letter does not go with {file}: each of its partitions has its own")
    if count:
        return Target(
            redis_url=redis_url or spec.redis.url,
            mode=spec.redis.mode,
            sentinel_master=spec.redis.sentinel.master_name if spec.redis.sentinel is not None else None,
            stream=spec.stream,
            dead_letter="",
            pipeline=pipeline,
            partitions=count,
        )
    return Target(
        redis_url=redis_url or spec.redis.url,
        mode=spec.redis.mode,
        sentinel_master=spec.redis.sentinel.master_name if spec.redis.sentinel is not None else None,
        stream=spec.stream,
        dead_letter=dead_letter or spec.dead_letter_stream,
        pipeline=pipeline,
    )


def _check_url(url: str) -> None:
    try:
        parse_url(url)
    except ValueError as exc:
        raise UsageError(f"--redis-url: {exc}") from None


@contextlib.contextmanager
def server_errors(target: Target, doing: str) -> Iterator[None]:
    """Turn a redis-py failure into a :class:`CommandError` worded by the operator's error rules."""
    try:
        yield
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        from streampipe_operator.streams.admin import translate_error

        where = redact_url(target.redis_url)
        raise CommandError(str(translate_error(exc, doing=doing, where=where, stream=target.stream))) from exc


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host``."""
    return re.sub(r"^(rediss?://[^:@/]*:)[^@/]*@", r"\1***@", url)
