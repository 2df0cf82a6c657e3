"""The registry service: group membership through etcd leases and the merged numbering plan."""

from services.registry.app import GROUP_HEALTH, RegistryApp
from services.registry.membership import DuplicateServerId, GroupLink
from services.registry.plan import PlanView, Route
from services.registry.records import KeyLayout, MemberInfo, NumberRecord

__all__ = [
    "GROUP_HEALTH",
    "DuplicateServerId",
    "GroupLink",
    "KeyLayout",
    "MemberInfo",
    "NumberRecord",
    "PlanView",
    "RegistryApp",
    "Route",
]
