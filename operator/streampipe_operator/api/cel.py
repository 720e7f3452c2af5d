"""Cross-field rules written twice, side by side: in CEL for the API server and in Python for us.

A rule is a method on an API model decorated with :func:`cel_rule`. The decorator carries the CEL
expression (``x-kubernetes-validations`` in the CRD) and the method is its Python twin: like the CEL
expression it returns ``True`` when the object is fine, else ``False`` (the rule's message is reported)
or, for a rule with a ``messageExpression``, the message itself. Both sides use the same message and
the same field path, so ``streampipe validate`` prints what ``kubectl apply`` would have said. The unit
tests run every invalid spec through the Python side and the k8s tests run the same table through the
API server, which is how the two twins are kept honest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

RULE_ATTRIBUTE = "__cel_rule__"


@dataclass(frozen=True)
class CelRule:
    """One ``x-kubernetes-validations`` entry."""

    rule: str
    message: str = ""
    message_expression: str = ""
    field_path: str = ""
    # A transition rule compares the object with the stored one (``oldSelf``): the API server checks it
    # on updates only, and its Python twin takes the old model as a second argument.
    transition: bool = False

    def __post_init__(self) -> None:
        if not (self.message or self.message_expression):
            raise ValueError(f"CEL rule {self.rule!r} needs a message a person understands")
        if self.field_path and not self.field_path.startswith("."):
            raise ValueError(f"fieldPath {self.field_path!r} must start with '.'")

    @property
    def loc(self) -> tuple[str, ...]:
        """The field path as a pydantic error location relative to the model (``.a.b`` -> ``("a", "b")``)."""
        return tuple(part for part in self.field_path.split(".") if part)

    def schema(self) -> dict[str, str]:
        """The entry as it appears in the CRD."""
        entry = {"rule": self.rule}
        if self.message:
            entry["message"] = self.message
        if self.message_expression:
            entry["messageExpression"] = self.message_expression
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


Check = Callable[..., bool | str]
F = TypeVar("F", bound=Check)


def cel_rule(
    rule: str, *, message: str = "", message_expression: str = "", field_path: str = ""
) -> Callable[[F], F]:
    """Mark a model method as the Python twin of a CEL rule.

    The method returns ``True`` when the rule holds; otherwise ``False`` (``message`` is reported) or,
    when the message is computed (``message_expression``), the text that expression yields.
    ``field_path`` (``.maxReplicas``) names the field the error is reported on.
    """
    definition = CelRule(
        rule=rule, message=message, message_expression=message_expression, field_path=field_path
    )

    def mark(check: F) -> F:
        setattr(check, RULE_ATTRIBUTE, definition)
        return check

    return mark


def cel_transition_rule(
    rule: str, *, message: str = "", message_expression: str = "", field_path: str = ""
) -> Callable[[Callable[[Any, Any], bool | str]], Callable[[Any, Any], bool | str]]:
    """Like :func:`cel_rule` for a rule that uses ``oldSelf``: the API server checks it when an object
    is updated, and the twin ``(self, old) -> bool | str`` is run by :func:`refused_changes`."""
    if "oldSelf" not in rule:
        raise ValueError(f"transition rule {rule!r} must use oldSelf")
    definition = CelRule(
        rule=rule,
        message=message,
        message_expression=message_expression,
        field_path=field_path,
        transition=True,
    )

    def mark(check: Callable[[Any, Any], bool | str]) -> Callable[[Any, Any], bool | str]:
        setattr(check, RULE_ATTRIBUTE, definition)
        return check

    return mark


def refused_changes(old: BaseModel, new: BaseModel, prefix: str = "") -> list[tuple[str, str]]:
    """What the transition rules of ``new``'s models refuse in the change from ``old``, as (field path,
    message) pairs: what the API server says to an update. Walks sub-models present in both."""
    refused: list[tuple[str, str]] = []
    if isinstance(new, RuleModel) and type(old) is type(new):
        for definition, check in type(new).transition_rules():
            outcome = check(new, old)
            if outcome is not True:
                message = outcome if isinstance(outcome, str) else definition.message
                refused.append((prefix + definition.field_path, message))
    for name, info in type(new).model_fields.items():
        before, after = getattr(old, name, None), getattr(new, name, None)
        if isinstance(before, BaseModel) and isinstance(after, BaseModel):
            refused.extend(refused_changes(before, after, f"{prefix}.{info.alias or name}"))
    return refused


class RuleModel(BaseModel):
    """Base of every model that carries CEL rules: runs their Python twins after field validation."""

    @classmethod
    def cel_rules(cls) -> Iterator[tuple[CelRule, Check]]:
        """The class's rules in definition order (base classes first)."""
        seen: set[str] = set()
        for klass in reversed(cls.__mro__):
            for name, member in vars(klass).items():
                definition = getattr(member, RULE_ATTRIBUTE, None)
                if isinstance(definition, CelRule) and name not in seen:
                    seen.add(name)
                    yield definition, getattr(cls, name)

    @classmethod
    def transition_rules(cls) -> Iterator[tuple[CelRule, Callable[[Any, Any], bool | str]]]:
        """The class's transition rules (``oldSelf``), checked on updates only."""
        for definition, check in cls.cel_rules():
            if definition.transition:
                yield definition, check

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        errors: list[InitErrorDetails] = []
        for definition, check in type(self).cel_rules():
            if definition.transition:
                continue  # needs the stored object: refused_changes() runs it
            outcome = check(self)
            if outcome is True:
                continue
            message = outcome if isinstance(outcome, str) else definition.message
            if not message:
                raise TypeError(f"{check.__qualname__} must return its message: the rule has no static one")
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError("cel_rule", message),
                    loc=definition.loc,
                    input=self._input_at(definition.loc),
                )
            )
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self

    def _input_at(self, loc: tuple[str, ...]) -> object:
        node: object = self
        for alias in loc:
            if not isinstance(node, BaseModel):
                return None
            fields = type(node).model_fields
            name = next((key for key, info in fields.items() if (info.alias or key) == alias), alias)
            node = getattr(node, name, None)
        return node


def add_rules_to_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """``json_schema_extra`` hook: puts a model's rules on its schema node as ``x-kubernetes-validations``."""
    if issubclass(cls, RuleModel):
        rules = [definition.schema() for definition, _ in cls.cel_rules()]
        if rules:
            schema["x-kubernetes-validations"] = rules
