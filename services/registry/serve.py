"""``pbxmesh serve registry``: the process around one RegistryApp."""

from __future__ import annotations

import logging

from services.registry.app import RegistryApp
from services.registry.membership import DuplicateServerId
from services.runtime.config import Config
from services.runtime.etcd import EtcdAuthFailed
from services.runtime.grpc_server import run_until_signal
from services.runtime.telemetry import setup_telemetry

_log = logging.getLogger(__name__)

EXIT_REFUSED = 3


async def serve_registry(config: Config) -> int:
    """Runs until SIGTERM (leave the group, drain) or SIGINT (leave, no drain); returns the exit code."""
    telemetry = setup_telemetry("registry", config.server.id, config.telemetry.otlp_endpoint)
    app = RegistryApp(config)

    async def start() -> None:
        try:
            await app.start()
        except BaseException:
            await app.stop(False)
            raise

    try:
        return await run_until_signal(start, app.stop, app.failed)
    except DuplicateServerId as exc:
        _log.error("refusing to start: %s", exc)
        return EXIT_REFUSED
    except EtcdAuthFailed as exc:
        _log.error("refusing to start: %s (check connector.username and connector.password)", exc)
        return EXIT_REFUSED
    except OSError as exc:
        _log.error("refusing to start: %s", exc)
        return EXIT_REFUSED
    finally:
        telemetry.shutdown()
