"""The keys ``streampipe up`` reads for its view and summary: the pipeline's stream(s), dead-letter
stream(s) and the completion records the quickstart's handlers write (``<stream>:done``). A partitioned
pipeline has one of each per partition; its observation is their sum (``plan.partitions``)."""

from __future__ import annotations

from collections.abc import Iterable

from streampipe_operator.api import StreamPipelineSpec
from streampipe_operator.local.accounting import StreamPosition
from streampipe_operator.plan.observed import StreamObservation
from streampipe_operator.plan.partitions import merge_observations
from streampipe_operator.streams.admin import RedisAdmin

COMPLETIONS_SUFFIX = ":done"


class PipelineKeys:
    """Where a pipeline's entries, dead letters and completion records are."""

    def __init__(self, spec: StreamPipelineSpec) -> None:
        self.stream = spec.stream
        self.layout = spec.partition_layout
        layout = self.layout
        if layout is None:
            self.streams = [spec.stream]
            self.dead_letters = [spec.dead_letter_stream]
            # For people: the key, or the pattern of the partitions' keys.
            self.dead_letter = spec.dead_letter_stream
            self.completions = spec.stream + COMPLETIONS_SUFFIX
        else:
            self.streams = layout.streams
            self.dead_letters = [layout.dead_letter(i) for i in range(layout.count)]
            self.dead_letter = f"{{{spec.stream}:<i>}}:dlq"
            self.completions = f"{{{spec.stream}:<i>}}{COMPLETIONS_SUFFIX}"
        # A handler writes its records next to the entry's stream: one stream per partition.
        self.completion_keys = [stream + COMPLETIONS_SUFFIX for stream in self.streams]

    async def observe(self, admin: RedisAdmin) -> StreamObservation:
        """The stream and its groups; a partitioned pipeline's partitions summed up."""
        if self.layout is None:
            return await admin.observe_stream(self.stream, dead_letter=self.dead_letter)
        parts = [
            await admin.observe_stream(stream, dead_letter=dead_letter)
            for stream, dead_letter in zip(self.streams, self.dead_letters, strict=True)
        ]
        return merge_observations(self.stream, parts)


def together(positions: Iterable[StreamPosition]) -> StreamPosition:
    """Several streams counted as one (a partitioned pipeline's dead letters): what was added sums
    up; the last ID stays per stream (the caller keeps each one)."""
    return StreamPosition(added=sum(position.added for position in positions))
