"""The operator's allow-list of worker images and ServiceAccounts (kube.policy), and the chart's values
that set it."""

from __future__ import annotations

from typing import Any

import pytest

from streampipe_operator import api
from streampipe_operator.kube.policy import WorkloadPolicy
from tests.unit.test_chart import operator_container, render, render_values


def spec(image: str, account: str | None = None) -> api.StreamPipelineSpec:
    group: dict[str, Any] = {"name": "billing", "handler": "shop.mod:handle", "image": image}
    if account is not None:
        group["template"] = {"serviceAccountName": account}
    return api.StreamPipelineSpec.model_validate(
        {"redis": {"url": "redis://r:6379/0"}, "stream": "{o}:events", "groups": [group]}
    )


@pytest.mark.parametrize(
    ("image", "account", "refused"),
    [
        pytest.param("registry.example.com/shop/billing:1.4.2", None, 0, id="allowed-image-default-account"),
        pytest.param("registry.example.com/shop/billing:1.4.2", "workers", 0, id="allowed-account"),
        pytest.param("docker.io/evil/miner:latest", None, 1, id="image-outside-the-patterns"),
        pytest.param("registry.example.com/shop/billing:1", "admin", 1, id="account-not-listed"),
        pytest.param("registry.example.com/SHOP/billing:1", "admin", 2, id="case-sensitive-and-both"),
    ],
)
def test_refusals(image: str, account: str | None, refused: int) -> None:
    policy = WorkloadPolicy(
        allowed_images=("registry.example.com/shop/*", "ghcr.io/streampipe/*"),
        allowed_service_accounts=("default", "workers"),
    )
    assert len(policy.refusals(spec(image, account))) == refused


def test_an_empty_policy_allows_anything() -> None:
    assert WorkloadPolicy().refusals(spec("anything:1", "any-account")) == []


def test_the_chart_passes_the_allow_lists_to_the_operator(tmp_path: Any) -> None:
    values = {
        "operator": {
            "allowedImages": ["registry.example.com/shop/*"],
            "allowedServiceAccounts": ["default", "workers"],
        }
    }
    args = operator_container(render_values(tmp_path, values))["args"]
    assert "--allowed-image=registry.example.com/shop/*" in args
    assert [a for a in args if a.startswith("--allowed-service-account=")] == [
        "--allowed-service-account=default",
        "--allowed-service-account=workers",
    ]
    assert not [a for a in operator_container(render())["args"] if a.startswith("--allowed")]
