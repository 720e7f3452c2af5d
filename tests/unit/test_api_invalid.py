"""Every manifest of the shared invalid-spec table is refused offline, at the right path, in the right words.

The same table goes through the real API server in tests/k8s/test_crd_server.py.
"""

from __future__ import annotations

import pytest

from streampipe_operator import api
from streampipe_operator.api.cel import RuleModel, refused_changes
from streampipe_operator.api.validation import validate_manifest
from tests.support.invalid_specs import (
    INVALID_CHANGES,
    INVALID_SPECS,
    VALID_CHANGES,
    VALID_SPECS,
    InvalidChange,
    InvalidSpec,
    ValidChange,
    ValidSpec,
    minimal_manifest,
)

API_PKG = f"{api.__name__}."  # the models live in the api sub-package's modules


def test_the_table_is_big_enough_and_ids_are_unique() -> None:
    assert len(INVALID_SPECS) >= 20
    assert len({case.id for case in INVALID_SPECS}) == len(INVALID_SPECS)


def test_the_base_manifest_is_valid() -> None:
    assert validate_manifest(minimal_manifest()) == []


@pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda case: case.id)
def test_refused_offline(case: InvalidSpec) -> None:
    errors = validate_manifest(case.manifest())
    # One mistake per case, so exactly one error: a second one means the case tests two things.
    assert len(errors) == 1, [str(error) for error in errors]
    assert errors[0].path == case.path
    assert case.message in errors[0].message


@pytest.mark.parametrize("case", INVALID_CHANGES, ids=lambda case: case.id)
def test_change_refused_offline(case: InvalidChange) -> None:
    old, new = (api.StreamPipeline.model_validate(document).spec for document in case.manifests())
    # Both sides are valid on their own: only the change is refused, at the path the server names.
    refused = refused_changes(old, new, "spec")
    assert [path for path, _ in refused] == [case.path]
    assert case.message in refused[0][1]


@pytest.mark.parametrize("case", VALID_CHANGES, ids=lambda case: case.id)
def test_change_accepted_offline(case: ValidChange) -> None:
    old, new = (api.StreamPipeline.model_validate(document).spec for document in case.manifests())
    assert refused_changes(old, new, "spec") == []


@pytest.mark.parametrize("case", VALID_SPECS, ids=lambda case: case.id)
def test_edge_of_a_rule_accepted_offline(case: ValidSpec) -> None:
    assert validate_manifest(case.manifest()) == []


def _rule_models() -> list[type[RuleModel]]:
    found: list[type[RuleModel]] = []
    for value in vars(api).values():
        if isinstance(value, type) and issubclass(value, RuleModel) and value.__module__.startswith(API_PKG):
            found.append(value)
    return found


def test_every_cross_field_rule_is_exercised_by_the_table() -> None:
    # A CEL rule nobody feeds a bad spec to could be wrong on the server and nobody would know.
    messages = [case.message for case in INVALID_SPECS] + [case.message for case in INVALID_CHANGES]
    untested = []
    for model in _rule_models():
        for rule, _check in model.cel_rules():
            text = rule.message or rule.message_expression.split("(")[0].strip("'")
            if not any(text.strip() in message or message in text for message in messages):
                untested.append(f"{model.__name__}: {rule.rule}")
    assert not untested, "CEL rules without an invalid spec in tests/support/invalid_specs.py:\n" + "\n".join(
        untested
    )
