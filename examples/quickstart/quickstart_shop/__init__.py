"""The quickstart's handlers (see examples/quickstart/pipeline.yaml and docs/quickstart.md)."""
