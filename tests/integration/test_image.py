"""What the image installs: the wheel of this repository (services, generated code, the `pbxmesh`
entry point, no tests), and a Dockerfile that builds it in one stage and runs it as a non-root user
in another. The image itself is built where a container runtime runs (`docker build .`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import REPO


def test_the_wheel_holds_the_services_the_generated_code_and_the_entry_point(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    built = subprocess.run([*command, "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("pbxmesh-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "services/cli.py",
        "services/sipgw/b2bua.py",
        "services/callstate/app.py",
        "pbxmesh/sipgw/v1/sipgw_pb2.py",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "pbxmesh = services.cli:main" in entry_points


def test_the_dockerfile_builds_in_one_stage_and_runs_as_a_user_in_another() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[0].endswith(" AS build")
    assert "USER 10001:10001" in lines and lines[-2:] == ['ENTRYPOINT ["pbxmesh"]', 'CMD ["--help"]']
    copied = {line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line}
    assert copied == {"requirements.txt", "pyproject.toml", "services", "gen"}
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
