"""Issue 14 items 20 and 21: under the systemd unit the caches live in $CACHE_DIRECTORY (a cache
that cannot open is a warning in the log and in /ready, never silence); API keys arrive through
LoadCredential=, never on the command line; the unit is hardened and systemd-analyze accepts it."""
from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from localllm.cli import main
from localllm.config import Config
from localllm.service.unit import UnitSpec, render_unit
from tests.serving import served

MAX_EXPOSURE = 2.0
"""`systemd-analyze security` exposure the unit must stay under (5.5 before issue 14)."""
GPU = dict(user="localllm", gpu_devices=("/dev/nvidia0", "/dev/nvidiactl"), gpu_groups=("video",))


def unit_lines(spec: UnitSpec) -> list[str]:
    return [line for line in render_unit(spec).splitlines() if line and not line.startswith("#")]


def test_caches_and_data_live_in_the_service_directories():
    lines = unit_lines(UnitSpec())
    assert "Environment=LOCALLLM_CACHE_DIR=%C/localllm" in lines and "CacheDirectory=localllm" in lines
    assert "Environment=LOCALLLM_DATA_DIR=%S/localllm" in lines and "StateDirectory=localllm" in lines


def test_api_keys_come_through_load_credential_never_the_command_line(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]):
    keys = tmp_path / "api-keys"
    lines = unit_lines(UnitSpec(api_key_file=keys))
    assert f"LoadCredential=api-keys:{keys}" in lines
    assert "Environment=LOCALLLM_API_KEY_FILE=%d/api-keys" in lines
    assert not any("--api-key" in line or "LOCALLLM_API_KEY=" in line for line in lines)
    assert not any(line.startswith("LoadCredential=") for line in unit_lines(UnitSpec()))  # no keys: none
    keys.write_text("ops:secret\n")  # CONFIG_DIR/api-keys is picked up by `service install`
    assert main(["service", "install", "--print", "--unit-dir", str(tmp_path / "u"), "--config-dir",
                 str(tmp_path)]) == 0
    assert f"LoadCredential=api-keys:{keys}" in capsys.readouterr().out


def test_the_unit_drops_capabilities_filters_syscalls_and_hides_processes_and_devices():
    lines = unit_lines(UnitSpec())
    for wanted in ("CapabilityBoundingSet=", "SystemCallFilter=@system-service", "ProtectProc=invisible",
                   "PrivateDevices=yes"):
        assert wanted in lines, wanted
    with_gpu = unit_lines(UnitSpec(**GPU))
    assert "PrivateDevices=yes" not in with_gpu and "DeviceAllow=/dev/nvidia0 rw" in with_gpu


@pytest.mark.parametrize("spec", [UnitSpec(api_key_file=Path("/etc/localllm/api-keys")), UnitSpec(**GPU)],
                         ids=["dynamic-user-with-keys", "user-and-gpu"])
def test_systemd_analyze_verifies_the_unit_and_scores_it_low(tmp_path: Path, spec: UnitSpec):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian package 'systemd')")
    unit = tmp_path / "localllm.service"
    unit.write_text(render_unit(spec))
    verify = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if "localllm.service" in line]
    assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr
    security = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True,
                              timeout=60)
    score = re.search(r"Overall exposure level for localllm\.service: ([0-9.]+)", security.stdout)
    assert score is not None, security.stdout + security.stderr
    assert float(score.group(1)) <= MAX_EXPOSURE, security.stdout


@pytest.mark.integration
async def test_a_cache_that_cannot_open_is_a_warning_in_ready_and_in_the_log(
        data_dir: Path, model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("a file where the cache directory should be")
    config = Config.from_flat({"parallel": 2, "ctx": 2048, "threads": 2, "data_dir": str(data_dir),
                               "cache_dir": str(not_a_directory)})
    with caplog.at_level(logging.WARNING):
        async with served(config) as server:
            async with aiohttp.ClientSession() as http:
                response = await http.get(server.make_url("/ready"))
                body = await response.json()
    assert response.status == 200  # serving without the caches, and saying so
    warnings = body["warnings"]
    assert len(warnings) == 2, warnings
    assert any("response cache" in w and str(not_a_directory) in w for w in warnings)
    assert any("prefix states" in w for w in warnings)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("response cache" in m and "OFF" in m for m in logged), logged
    assert any("prefix states" in m and "OFF" in m for m in logged), logged
