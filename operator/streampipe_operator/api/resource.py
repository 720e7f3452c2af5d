"""The StreamPipeline resource as a whole: metadata, spec and status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic.alias_generators import to_camel

from streampipe_operator.api.fields import DNS_LABEL, MAX_PIPELINE_NAME
from streampipe_operator.api.spec import StreamPipelineSpec
from streampipe_operator.api.status import StatusModel, StreamPipelineStatus, plain

# ------------------------------------------------------------------------------------ the resource


class ObjectMeta(StatusModel):
    """The metadata fields streampipe reads; the rest is kept as it came."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: Annotated[str, StringConstraints(pattern=DNS_LABEL, max_length=MAX_PIPELINE_NAME)] | None = Field(
        default=None,
        description="Name of the pipeline: a DNS label of at most 32 characters, because it prefixes the "
        "worker Deployments `<name>-<group>`.",
    )
    namespace: str | None = Field(default=None, description="Namespace of the pipeline.")
    uid: str | None = Field(default=None, description="Unique ID set by the API server.")
    generation: int | None = Field(default=None, description="Spec generation set by the API server.")
    labels: dict[str, str] | None = Field(default=None, description="Labels.")
    annotations: dict[str, str] | None = Field(default=None, description="Annotations.")


class StreamPipeline(BaseModel):
    """A Redis Streams / Valkey event pipeline: one stream, its consumer groups, retention, retries and a
    dead-letter stream. The operator creates the groups, trims the stream and runs one autoscaled worker
    Deployment per group."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    api_version: Literal["streampipe.dev/v1alpha1"] = Field(
        default="streampipe.dev/v1alpha1", description="API version."
    )
    kind: Literal["StreamPipeline"] = Field(default="StreamPipeline", description="Kind.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: StreamPipelineSpec = Field(description="Desired state.")
    status: StreamPipelineStatus | None = Field(default=None, description="Observed state.")

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> StreamPipeline:
        """Parse a resource body as the API server or kopf hands it over.

        kopf's ``body``/``spec`` are read-only Mapping views, which strict models do not take for
        dicts; this copies them into plain dicts and lists first. Raises pydantic's ValidationError
        (``streampipe_operator.api.validation.errors_of`` words it the API server's way).
        """
        return cls.model_validate(plain(body))

    def to_manifest(self) -> dict[str, Any]:
        """The resource as Kubernetes stores it: camelCase, absent instead of null, defaults filled in."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
