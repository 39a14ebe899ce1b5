"""`localllm list | show | plan | rm` in process, on the bundled model; user errors exit 2."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from localllm.cli import main


@pytest.fixture()
def env(data_dir: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCALLLM_DATA_DIR", str(data_dir))  # holds the assembled bundled model
    return data_dir


def test_show_prints_gguf_facts(env: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["show", "gemma3-270m"]) == 0
    out = capsys.readouterr().out
    for expected in ["architecture:    gemma3", "layers:          18", "trained context: 32768",
                     "KV heads:        1", "quantisation:    Q4_K_M", "chat template:   catalogue override"]:
        assert expected in out


def test_show_by_path_reports_no_template(model_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["show", str(model_path)]) == 0
    assert "chat template:   none" in capsys.readouterr().out


def test_show_says_whether_tools_and_reasoning_work(env: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["show", "gemma3-270m"]) == 0
    out = capsys.readouterr().out
    assert "template family: generic (catalogue)" in out
    assert "tools:           fallback" in out and "reasoning:       no" in out


def test_show_detects_a_native_reasoning_family(tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]):
    """A user catalogue entry with Qwen3's own template: hermes tools, <think> reasoning."""
    (tmp_path / "models" / "qwen3-like").mkdir(parents=True)
    (tmp_path / "models" / "qwen3-like" / "m.gguf").symlink_to(model_path)
    template = (Path(__file__).parents[1] / "fixtures" / "templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
    (tmp_path / "models.toml").write_text(f'[models.qwen3-like]\nfile = "m.gguf"\nchat_template = {json.dumps(template)}\n')
    monkeypatch.setenv("LOCALLLM_DATA_DIR", str(tmp_path))
    assert main(["show", "qwen3-like"]) == 0
    out = capsys.readouterr().out
    assert "template family: hermes (detected)" in out
    assert "tools:           native" in out and "reasoning:       yes (<think> ... </think>)" in out


def test_show_by_path_says_no_tools_without_a_template(model_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["show", str(model_path)]) == 0
    assert "tools:           no" in capsys.readouterr().out


def test_list_marks_local_and_remote_models(env: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "QUANT", "SIZE", "LOCAL"]
    gemma = next(l for l in lines if l.startswith("gemma3-270m "))
    qwen = next(l for l in lines if l.startswith("qwen2.5-0.5b ") and "Q4_K_M" in l)
    assert "yes" in gemma.split() and "241 MiB" in gemma
    assert "no" in qwen.split() and "Qwen/Qwen2.5-0.5B-Instruct-GGUF" in qwen


def test_plan_json_with_given_memory(env: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["plan", "gemma3-270m", "--json", "--vram-mib", "0", "--ram-mib", "8000",
                 "--parallel", "2", "--ctx", "4096"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["n_gpu_layers"], plan["ctx"], plan["slots"], plan["kv_type"]) == (0, 4096, 2, "f16")
    assert plan["kv_bytes"] == 18 * 1024 * 4096 and plan["fits"]


def test_plan_text_with_a_gpu(env: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["plan", "gemma3-270m", "--vram-mib", "4000", "--ram-mib", "8000"]) == 0
    assert "GPU layers:  18" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["show", "nope"], "unknown model 'nope'"),
    (["show", "../../etc/passwd"], "unknown model"),
    (["plan", "qwen2.5-0.5b"], "not downloaded; run `localllm pull qwen2.5-0.5b`"),
    (["pull", "qwen2.5-0.5b", "--quant", "Q9_X"], "has no Q9_X file"),
    (["pull", "gemma3-270m"], "bundled: nothing to pull"),
    (["pull", "bad org/x/y.gguf"], "invalid hub file reference"),
    (["rm", "nope"], "unknown model"),
])
def test_user_errors_exit_2_without_traceback(env: Path, capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str):
    code = main(argv)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert code == (1 if argv[0] == "plan" else 2)


def test_bad_user_catalogue_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("LOCALLLM_DATA_DIR", str(tmp_path))
    (tmp_path / "models.toml").write_text('[models.evil]\nhf_repo = "a/b"\nfile = "../../x.gguf"\n')
    assert main(["list"]) == 2
    assert "unsafe file name" in capsys.readouterr().err


def test_rm_deletes_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("LOCALLLM_DATA_DIR", str(tmp_path))
    assert main(["show", "gemma3-270m"]) == 0  # assembles the bundled model here
    assert (tmp_path / "models" / "gemma3-270m").is_dir()
    assert main(["rm", "gemma3-270m"]) == 0
    assert not (tmp_path / "models" / "gemma3-270m").exists()
    assert main(["rm", "gemma3-270m"]) == 0 and "had no local files" in capsys.readouterr().out


def test_show_reads_the_tool_use_template_requests_with_tools_render_with(
        model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """A GGUF whose main template knows nothing of tools but whose tool-use variant is Hermes'
    (Hermes 2 Pro ships so): the server renders requests with tools with the variant."""
    from localllm.models import commands

    hermes = (Path(__file__).parents[1] / "fixtures" / "templates" / "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja").read_text()
    real = commands.read_gguf

    def with_variant(path):
        info = real(path)
        info.metadata["tokenizer.chat_template"] = "{% for m in messages %}{{ m.content }}{% endfor %}"
        info.metadata["tokenizer.chat_template.tool_use"] = hermes
        return info

    monkeypatch.setattr(commands, "read_gguf", with_variant)
    assert main(["show", str(model_path)]) == 0
    out = capsys.readouterr().out
    assert "template family: hermes (detected)" in out and "tools:           native" in out
