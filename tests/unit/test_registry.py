"""The catalogue: per-quant files, user overrides, and refusal of unsafe entries."""
from __future__ import annotations

from pathlib import Path

import pytest

from localllm.chat.families import FAMILIES
from localllm.models.registry import CatalogueError, load_catalogue


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_shipped_catalogue_has_hub_entries_with_quant_files():
    specs = load_catalogue()
    assert specs["gemma3-270m"].bundled and specs["gemma3-270m"].chat_template
    qwen = specs["qwen2.5-0.5b"]
    assert qwen.hf_repo == "Qwen/Qwen2.5-0.5B-Instruct-GGUF" and qwen.quant == "Q4_K_M"
    assert qwen.file == qwen.file_for() == "qwen2.5-0.5b-instruct-q4_k_m.gguf"
    assert qwen.file_for("Q8_0") == "qwen2.5-0.5b-instruct-q8_0.gguf"
    assert {"llama3.2-1b", "llama3.2-3b", "gemma3-1b", "qwen2.5-1.5b"} <= set(specs)
    with pytest.raises(CatalogueError, match="no Q2_K file"):
        qwen.file_for("Q2_K")


def test_shipped_entries_name_their_template_family():
    """Each family named exists, and the bundled Gemma template knows nothing of tools."""
    specs = load_catalogue()
    assert {s.template_family for s in specs.values()} <= set(FAMILIES)
    assert specs["gemma3-270m"].template_family == "generic"
    assert specs["qwen2.5-0.5b"].template_family == "hermes" and specs["llama3.2-1b"].template_family == "llama3"


def test_user_catalogue_adds_and_overrides(tmp_path: Path):
    specs = load_catalogue(write(tmp_path, """
[models.gemma3-270m]
file = "mine.gguf"
default_ctx = 2048
[models.extra]
hf_repo = "me/extra-GGUF"
quant = "Q8_0"
[models.extra.files]
Q8_0 = "extra-q8_0.gguf"
[models.extra.sha256s]
Q8_0 = "%s"
""" % ("ab" * 32)))
    assert specs["gemma3-270m"].file == "mine.gguf" and specs["gemma3-270m"].default_ctx == 2048
    assert specs["extra"].file == "extra-q8_0.gguf" and specs["extra"].sha256_for("Q8_0") == "ab" * 32


@pytest.mark.parametrize("entry, message", [
    ('[models."../x"]\nfile = "a.gguf"', "invalid model name"),
    ('[models.x]\nfile = "../a.gguf"', "unsafe file name"),
    ('[models.x]\nfile = "/etc/a.gguf"', "unsafe file name"),
    ('[models.x]\nhf_repo = "no-slash"\nfile = "a.gguf"', "invalid hf_repo"),
    ('[models.x]\nfile = "a.gguf"\nsha256 = "xyz"', "invalid sha256"),
    ('[models.x]\nhf_repo = "a/b"', "needs `file`"),
    ('[models.x\n', "models.toml"),
    ('[models.x]\nfile = "a.gguf"\ntemplate_family = "qwen"', "unknown template_family 'qwen'"),
    ('[models.x]\nfile = "a.gguf"\ntemplate_family = 3', "`template_family` must be a string"),
])
def test_bad_entries_are_refused_with_the_reason(tmp_path: Path, entry: str, message: str):
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(write(tmp_path, entry))
