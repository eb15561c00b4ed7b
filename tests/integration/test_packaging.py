"""The wheel installs one package, gpufleet, and the CLI it installs cannot be shadowed by the
folder it runs in: built from this checkout, installed into a fresh virtual environment."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel alone; its dependencies come from this environment's
    site-packages through a .pth line (read as a path only: none of its .pth files, such as
    the editable gpufleet's, run there)."""
    tmp = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp), str(ROOT)], check=True, capture_output=True)  # fmt: skip
    [wheel] = tmp.glob("gpufleet-*.whl")
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)  # fmt: skip
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())  # fmt: skip
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir


def test_the_wheel_installs_only_gpufleet_and_its_dist_info(installed: Path) -> None:
    [record] = installed.glob("lib/python*/site-packages/gpufleet-*.dist-info/RECORD")
    paths = [line.split(",")[0] for line in record.read_text().splitlines() if line]
    outside = [p for p in paths if not p.startswith(("gpufleet/", "gpufleet-")) and not p.endswith("/bin/gpufleet")]
    assert outside == []
    assert "gpufleet/dispatcher/store/lua/move_to_nodes.lua" in paths  # the scripts ship as package data
    tops = {p.split("/")[0] for p in paths if not p.startswith("..")}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"gpufleet"}


def test_the_demo_runs_from_a_folder_holding_a_cli_package_and_a_worker_module(installed: Path, tmp_path: Path) -> None:
    """Given a working directory with its own `cli/` package and `worker.py` (both raise when
    imported), `gpufleet demo` runs its whole fleet: no gpufleet process imports them."""
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "__init__.py").write_text("raise SystemExit('the wrong cli package was imported')\n")
    (tmp_path / "worker.py").write_text("raise SystemExit('the wrong worker module was imported')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUFLEET_", "PYTHON"))}
    out = subprocess.run([str(installed / "bin" / "gpufleet"), "demo", "--jobs", "20"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "20 finished, 0 failed" in out.stdout
    assert "wrong" not in out.stderr and "Traceback" not in out.stderr
