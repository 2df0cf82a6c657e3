"""``pbxmesh serve sipgw``: the process around one SipGatewayApp."""

from __future__ import annotations

from services.runtime.config import Config
from services.runtime.serve import serve
from services.sipgw.app import SipGatewayApp


async def serve_sipgw(config: Config) -> int:
    return await serve("sipgw", config, lambda: SipGatewayApp(config))
