"""`localllm service install`: the unit systemd accepts, the default config, never overwriting it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localllm.cli import main
from localllm.config import Config, ConfigError
from localllm.service.unit import UnitSpec, install, render_default_config, render_unit

REQUIRED = [
    "Type=notify", "NotifyAccess=main", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID",
    "Restart=on-failure", "DynamicUser=yes", "ProtectSystem=strict", "StateDirectory=localllm",
    "CacheDirectory=localllm", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes",
    "Environment=LOCALLLM_DATA_DIR=%S/localllm", "Environment=LOCALLLM_CACHE_DIR=%C/localllm",
]


def unit_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_unit_runs_this_interpreter_with_the_config_file():
    lines = unit_lines(render_unit(UnitSpec(config_path=Path("/etc/localllm/config.toml"))))
    assert f"ExecStart={sys.executable} -m localllm.cli serve --config /etc/localllm/config.toml" in lines
    for required in REQUIRED:
        assert any(line.startswith(required) for line in lines), required
    assert not any(line.startswith(("DeviceAllow=", "SupplementaryGroups=", "User=")) for line in lines)


def test_gpu_devices_and_a_dedicated_user():
    spec = UnitSpec(user="localllm", gpu_devices=("/dev/nvidia0", "/dev/nvidiactl"), gpu_groups=("video",))
    lines = unit_lines(render_unit(spec))
    assert "DeviceAllow=/dev/nvidia0 rw" in lines and "DeviceAllow=/dev/nvidiactl rw" in lines
    assert "SupplementaryGroups=video" in lines
    assert "User=localllm" in lines and "DynamicUser=yes" not in lines


@pytest.mark.parametrize("spec", [
    UnitSpec(),
    UnitSpec(user="localllm", gpu_devices=("/dev/nvidia0", "/dev/nvidia-uvm"), gpu_groups=("video",)),
], ids=["dynamic-user", "user-and-gpu"])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, spec: UnitSpec):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian package 'systemd'; .ci/run installs it)")
    unit = tmp_path / "localllm.service"
    unit.write_text(render_unit(spec))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "localllm.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_the_default_config_loads_as_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for name in [n for n in __import__("os").environ if n.startswith("LOCALLLM_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "config.toml"
    path.write_text(render_default_config())
    assert Config.load(path).to_flat() == Config().to_flat()


def test_install_writes_both_and_never_overwrites_the_config(tmp_path: Path):
    spec = UnitSpec(config_path=tmp_path / "etc" / "config.toml")
    first = install(spec, tmp_path / "units")
    assert first.config_written and first.unit_path.read_text() == render_unit(spec)
    spec.config_path.write_text('port = 9000\n')
    second = install(spec, tmp_path / "units")
    assert not second.config_written
    assert spec.config_path.read_text() == 'port = 9000\n'


def test_print_shows_both_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    units, etc = tmp_path / "units", tmp_path / "etc"
    assert main(["service", "install", "--print", "--unit-dir", str(units), "--config-dir", str(etc)]) == 0
    out = capsys.readouterr().out
    assert "Type=notify" in out and f"--config {etc / 'config.toml'}" in out and 'model = "' in out
    assert not units.exists() and not etc.exists()


def test_install_command_writes_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    units, etc = tmp_path / "units", tmp_path / "etc"
    assert main(["service", "install", "--user", "llm", "--unit-dir", str(units), "--config-dir", str(etc)]) == 0
    assert "User=llm" in (units / "localllm.service").read_text()
    assert (etc / "config.toml").is_file()
    assert "kept the existing" not in capsys.readouterr().out


def test_paths_with_spaces_percent_and_quotes_survive_systemd(tmp_path: Path):
    """Issue 14 (review): ExecStart= and LoadCredential= paths went in raw, so a space split the
    command and a `%` was read as a specifier. systemd must read back the very paths."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here (Debian package 'systemd'; .ci/run installs it)")
    venv = tmp_path / "my venv 100%d"
    venv.mkdir()
    (venv / "python").symlink_to(sys.executable)  # verify checks that ExecStart's program exists
    spec = UnitSpec(python=str(venv / "python"), config_path=Path("/etc/local llm/%h$HOME\"x\\.toml"),
                    api_key_file=Path("/etc/local llm/keys 5%"))
    text = render_unit(spec)
    lines = unit_lines(text)
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (f'ExecStart="{tmp_path}/my venv 100%%d/python" -m localllm.cli serve --config '
                          '"/etc/local llm/%%h$$HOME\\"x\\\\.toml"')
    assert "LoadCredential=api-keys:/etc/local llm/keys 5%%" in lines
    unit = tmp_path / "localllm.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "localllm.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_a_path_with_a_newline_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(ConfigError, match="control characters"):
        render_unit(UnitSpec(config_path=Path("/etc/x\nExecStartPre=/bin/evil")))
    key_file = tmp_path / "keys\nExecStartPre=evil"
    assert main(["service", "install", "--unit-dir", str(tmp_path / "units"), "--config-dir", str(tmp_path),
                 "--api-key-file", str(key_file)]) == 2
    assert "control characters" in capsys.readouterr().err and not (tmp_path / "units").exists()
