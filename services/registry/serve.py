"""``pbxmesh serve registry``: the process around one RegistryApp."""

from __future__ import annotations

from services.registry.app import RegistryApp
from services.registry.membership import DuplicateServerId
from services.runtime.config import Config
from services.runtime.etcd import EtcdAuthFailed
from services.runtime.serve import serve


async def serve_registry(config: Config) -> int:
    """Runs until SIGTERM (leave the group, drain) or SIGINT (leave, no drain); returns the exit code."""
    return await serve("registry", config, lambda: RegistryApp(config), (DuplicateServerId, EtcdAuthFailed))
