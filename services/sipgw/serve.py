"""``pbxmesh serve sipgw``: the process around one SipGatewayApp."""

from __future__ import annotations

from pathlib import Path

from services.runtime.config import Config
from services.runtime.serve import serve
from services.sipgw.app import SipGatewayApp


async def serve_sipgw(config: Config, path: Path | None = None) -> int:
    """``path``: the config file, watched for a change of the trunk's secrets."""
    return await serve("sipgw", config, lambda: SipGatewayApp(config, path))
