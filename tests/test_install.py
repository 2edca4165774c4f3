"""scripts/debian-packages.sh: what a fresh machine lacks is installed, found by PATH and by
absolute path, never by a name relative to the checkout (its nginx/ folder is not nginx)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.services import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "debian-packages.sh"
LIST = PROJECT_ROOT / "scripts" / "debian-packages.txt"
# Relative entries too: from the checkout, "." and "nginx" name folders, not commands.
SEARCH_PATH = "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:.:nginx:"


def _needed() -> dict[str, str]:
    """Each command or file of the list, and its package."""
    entries = {}
    for line in LIST.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            needed, package = line.split()
            entries[needed] = package
    return entries


def _run(root: Path, *args: str, path: str = SEARCH_PATH) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", str(SCRIPT), "--root", str(root), *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def _fake_apt_get(directory: Path) -> tuple[str, Path]:
    """A PATH whose apt-get (and sudo) only record their arguments, and the record file."""
    directory.mkdir()
    record = directory / "calls"
    (directory / "apt-get").write_text(f'#!/bin/sh\necho "apt-get $*" >> {record}\n')
    (directory / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    for tool in ("apt-get", "sudo"):
        (directory / tool).chmod(0o755)
    return f"{directory}:{SEARCH_PATH}", record


def test_a_machine_without_the_servers_gets_every_package(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert (PROJECT_ROOT / "nginx").is_dir()  # what fooled the old `[ -e nginx ]`
    printed = _run(root, "--print").stdout.split()
    assert printed == sorted(set(_needed().values()))
    assert "nginx" in printed


def test_the_missing_packages_go_to_apt_get_install(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    wrk = root / "usr" / "bin" / "wrk"
    wrk.write_text("#!/bin/sh\n")
    wrk.chmod(0o755)
    path, record = _fake_apt_get(tmp_path / "bin")
    _run(root, path=path)
    update, install = record.read_text().splitlines()
    assert update == "apt-get update -qq"
    words = install.split()
    assert words[:2] == ["apt-get", "install"]
    asked = {word for word in words[2:] if not word.startswith("-")}
    assert asked == set(_needed().values()) - {"wrk"}


def test_a_machine_with_everything_installs_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for needed in _needed():
        file = root / needed.lstrip("/") if needed.startswith("/") else root / "usr/sbin" / needed
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("#!/bin/sh\n")
        file.chmod(0o755)
    path, record = _fake_apt_get(tmp_path / "bin")
    assert _run(root, "--print", path=path).stdout == ""
    _run(root, path=path)
    assert not record.exists()
