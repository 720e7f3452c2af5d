"""streampipe operator: StreamPipeline API, CRD generation, reconcile logic and the `streampipe` CLI."""

__version__ = "0.1.0"
