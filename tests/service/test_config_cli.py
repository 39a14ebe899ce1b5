"""`localllm config show`: file < environment < flags, secrets masked; invalid configuration exits 2
naming the key, without a traceback."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from localllm.cli import main
from localllm.config import Config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LOCALLLM_")]:
        monkeypatch.delenv(name)


def show(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["config", "show", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch, capsys):
    path = tmp_path / "config.toml"
    path.write_text('port = 9000\nparallel = 3\nctx = 4096\nlog_level = "debug"\n')
    monkeypatch.setenv("LOCALLLM_PARALLEL", "5")
    monkeypatch.setenv("LOCALLLM_CTX", "2048")
    code, out, _ = show(capsys, "--config", str(path), "--ctx", "1024")
    assert code == 0
    shown = tomllib.loads(out)
    assert (shown["port"], shown["parallel"], shown["ctx"], shown["log_level"]) == (9000, 5, 1024, "debug")
    assert shown["host"] == "127.0.0.1"  # untouched keys show their defaults
    assert "port = 9000  # config file" in out and "parallel = 5  # environment" in out
    assert "ctx = 1024  # flag" in out


def test_the_config_file_can_come_from_the_environment(tmp_path: Path, monkeypatch, capsys):
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 7000\n")  # tables are accepted too
    monkeypatch.setenv("LOCALLLM_CONFIG", str(path))
    assert tomllib.loads(show(capsys)[1])["port"] == 7000


def test_the_output_loads_back_as_the_same_configuration(tmp_path: Path, capsys):
    code, out, _ = show(capsys, "--port", "8123", "--log-prompts")
    assert code == 0
    path = tmp_path / "shown.toml"
    path.write_text(out)
    assert Config.load(path).to_flat() == Config.load(None, {"port": 8123, "log_prompts": True}).to_flat()


def test_secrets_are_masked(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("LOCALLLM_API_KEY", "sk-very-secret")
    code, out, _ = show(capsys)
    assert code == 0 and "sk-very-secret" not in out
    assert tomllib.loads(out)["api_key"] == "********"


@pytest.mark.parametrize("file_text, env, flags, key", [
    ('port = "eighty"\n', {}, [], "port"),
    ("prot = 8080\n", {}, [], "prot"),
    ('log_level = "loud"\n', {}, [], "log_level"),
    ("", {"LOCALLLM_PARALLEL": "0"}, [], "parallel"),
    ("", {"LOCALLLM_LOG_PROMPTS": "maybe"}, [], "log_prompts"),
    ("", {}, ["--port", "70000"], "port"),
    ("port = = 1\n", {}, [], "config file"),
])
def test_invalid_configuration_names_the_key_and_exits_2(tmp_path, monkeypatch, capsys, file_text, env, flags, key):
    path = tmp_path / "config.toml"
    path.write_text(file_text)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = show(capsys, "--config", str(path), *flags)
    assert code == 2 and out == ""
    assert err.startswith("localllm: ") and key in err and "Traceback" not in err


def test_serve_with_invalid_configuration_fails_fast_without_a_traceback(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALLLM_")}
    result = subprocess.run([sys.executable, "-m", "localllm.cli", "serve", "--ctx", "10"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, env={**env, "LOCALLLM_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "ctx" in result.stderr and "Traceback" not in result.stderr
