"""Which workloads this operator may create: an allow-list of worker images and ServiceAccounts.

Whoever may create a StreamPipeline in a namespace could otherwise run any image under any
ServiceAccount there (docs/security.md). ``streampipe operator run --allowed-image PATTERN
--allowed-service-account NAME`` (chart values ``operator.allowedImages`` and
``operator.allowedServiceAccounts``) narrows that: a pipeline that names anything else is refused
with ``Ready=False``/``NotAllowed`` and nothing is created for it. Empty lists allow everything.
Pure: no I/O.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict

from streampipe_operator import api

DEFAULT_SERVICE_ACCOUNT = "default"


class WorkloadPolicy(BaseModel):
    """Shell-style patterns (``*``, ``?``, ``[...]``, matched case-sensitively) for worker images,
    exact names for ServiceAccounts; a pod without ``serviceAccountName`` runs as ``default``."""

    model_config = ConfigDict(frozen=True)

    allowed_images: tuple[str, ...] = ()
    allowed_service_accounts: tuple[str, ...] = ()

    def refusals(self, spec: api.StreamPipelineSpec) -> list[str]:
        """One sentence per group and thing the policy does not allow; empty when all is allowed."""
        found = []
        for group in spec.groups:
            if self.allowed_images and not any(fnmatchcase(group.image, p) for p in self.allowed_images):
                found.append(
                    f"group {group.name}: image {group.image} matches none of the images this operator "
                    f"allows ({', '.join(self.allowed_images)})"
                )
            template = group.template
            account = (template.service_account_name if template else None) or DEFAULT_SERVICE_ACCOUNT
            if self.allowed_service_accounts and account not in self.allowed_service_accounts:
                found.append(
                    f"group {group.name}: ServiceAccount {account} is not one this operator allows "
                    f"({', '.join(self.allowed_service_accounts)})"
                )
        return found
