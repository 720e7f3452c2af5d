"""Every reason streampipe writes, as one typed set: the reasons of status conditions and of Events.

Both are CamelCase words a person sees with ``kubectl describe`` and a machine matches on, so they are
named once here; docs/operator.md explains each. A ``Reason`` is a ``str``: it is written as is.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    # Ready (its False reasons are posted as Warning Events, Reconciled as a Normal one)
    RECONCILED = "Reconciled"
    INVALID_SPEC = "InvalidSpec"
    CONFLICT = "Conflict"
    NOT_ALLOWED = "NotAllowed"
    DELETION_BLOCKED = "DeletionBlocked"
    REDIS_UNREACHABLE = "RedisUnreachable"
    REDIS_AUTH_FAILED = "RedisAuthFailed"
    CREDENTIALS_MISSING = "CredentialsMissing"
    GROUPS_NOT_READY = "GroupsNotReady"
    WORKLOAD_FAILED = "WorkloadFailed"
    # any condition not checked in this pass
    NOT_CHECKED = "NotChecked"
    # RedisReachable
    CONNECTED = "Connected"
    UNREACHABLE = "Unreachable"
    AUTH_FAILED = "AuthFailed"
    # GroupsReady
    ALL_GROUPS_EXIST = "AllGroupsExist"
    GROUPS_MISSING = "GroupsMissing"
    # Scaling
    SCALING_ACTIVE = "Active"
    SCALING_DISABLED = "Disabled"
    SCALING_HELD = "Held"
    BACKLOG_UNKNOWN = "BacklogUnknown"
    SCALE_FAILED = "ScaleFailed"
    # RetentionHeld
    RETENTION_HOLDING = "UnprocessedEntries"
    RETENTION_NOT_HELD = "NotHeld"
    NO_RETENTION = "NoRetention"
    PROTECTION_OFF = "ProtectionOff"
    # DurabilityAtRisk (also an Event when it turns True)
    APPEND_ONLY_OFF = "AppendOnlyOff"
    APPEND_ONLY_ON = "AppendOnlyOn"
    DURABILITY_AT_RISK = "DurabilityAtRisk"
    APPEND_FSYNC_NO = "AppendFsyncNo"
    # EvictionRisk (also an Event when it turns True)
    KEYS_EVICTABLE = "KeysEvictable"
    NO_EVICTION = "StreamsNotEvicted"
    EVICTION_RISK = "EvictionRisk"
    # Events of a housekeeping pass (engine.housekeeping; the operator posts some, `up` shows them)
    GROUP_CREATED = "GroupCreated"
    GROUP_RECREATED = "GroupRecreated"
    GROUP_DESTROYED = "GroupDestroyed"
    GROUP_ORPHANED = "GroupOrphaned"
    RETENTION_HELD = "RetentionHeld"
    TRIMMED = "Trimmed"
    RETENTION_FAILED = "RetentionFailed"
    CONSUMER_REMOVED = "ConsumerRemoved"
    CONSUMER_KEPT = "ConsumerKept"
    CONSUMER_CLEANUP_FAILED = "ConsumerCleanupFailed"
    LAYOUT_GROWN = "LayoutGrown"
    LAYOUT_SWITCH_RETIRED = "LayoutSwitchRetired"
    LAYOUT_RECORD_FAILED = "LayoutRecordFailed"
    # Events of the controller
    DEPLOYMENT_CREATED = "DeploymentCreated"
    DEPLOYMENT_UPDATED = "DeploymentUpdated"
    DEPLOYMENT_DELETED = "DeploymentDeleted"
    DRIFT_REVERTED = "DriftReverted"
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    DATA_RETAINED = "DataRetained"
    DATA_DELETED = "DataDeleted"
