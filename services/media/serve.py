"""``pbxmesh serve media``: the process around one MediaApp."""

from __future__ import annotations

from services.media.app import MediaApp
from services.runtime.config import Config
from services.runtime.serve import serve


async def serve_media(config: Config) -> int:
    return await serve("media", config, lambda: MediaApp(config))
