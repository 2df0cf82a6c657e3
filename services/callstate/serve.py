"""``pbxmesh serve callstate``: the process around one CallStateApp."""

from __future__ import annotations

from services.callstate.app import CallStateApp
from services.runtime.config import Config
from services.runtime.serve import serve


async def serve_callstate(config: Config) -> int:
    return await serve("callstate", config, lambda: CallStateApp(config))
