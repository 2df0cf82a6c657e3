"""RFC 4475's torture messages against a live gateway, in a loopback-only network namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.support import REPO, child_env


def test_rfc4475_messages_against_a_live_gateway_in_a_loopback_only_namespace() -> None:
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed, and root to make a network namespace"
    script = REPO / "tests" / "netns" / "torture_gateway.py"
    result = subprocess.run(
        [unshare, "-n", "--", "sh", "-c", f"ip link set lo up && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=180, cwd=REPO, env=child_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert ", 0 failures" in result.stdout
