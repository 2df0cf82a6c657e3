"""The trunk's secrets changed in the config file while the gateway runs: take them at once.

A gateway restart would end its calls, so a change of the group's trunk secret (see
auth/trunk_proof.py: add the new one to ``trunk.accept_secrets`` everywhere, make it
``trunk.secret`` everywhere, drop the old one) is read from the file as it is written. The whole
file is checked as at start; a file that does not load is logged (the message names the key and
never a secret's value) and the secrets in use stay. Other keys take effect at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from services.runtime.config import ConfigError, load_config
from services.sipgw.auth.trunk_proof import TrunkProof

_log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between two looks at the file


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


async def watch_trunk_secrets(path: Path, proof: TrunkProof, every: float = EVERY) -> None:
    seen = _stamp(path)
    while True:
        await asyncio.sleep(every)
        stamp = _stamp(path)
        if stamp is None or stamp == seen:
            continue
        seen = stamp
        try:
            config = load_config(path)
        except ConfigError as error:
            _log.error("config file %s changed but does not load (%s): the trunk secrets in use stay", path, error)
            continue
        accepted = tuple(secret.value for secret in config.trunk.accept_secrets)
        with contextlib.suppress(ValueError):  # an empty secret: load_config refused it already
            before = proof.fingerprint()
            proof.set_secrets(config.trunk.secret.value, accepted)
            if proof.fingerprint() != before:
                _log.warning("trunk secrets changed: signing with trunk.secret, accepting %d in all", proof.accepted)
