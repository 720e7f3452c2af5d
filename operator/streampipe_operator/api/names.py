"""The API's identity: group, version, kind and the resource names the CRD and the client use."""

from __future__ import annotations

GROUP = "streampipe.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "StreamPipeline"
LIST_KIND = "StreamPipelineList"
PLURAL = "streampipelines"
SINGULAR = "streampipeline"
SHORT_NAMES = ("spipe",)
CATEGORIES = ("streampipe",)
