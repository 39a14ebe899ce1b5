"""The parsers read calls exactly as each real chat template writes them (tests/fixtures/templates):
render a history whose assistant turn made tool calls, cut that turn out of the prompt, and parse
it with the template's detected family, whole and one character at a time. Models are trained
on what their template writes, so this is the format they answer in (llama.cpp's tests call it
reconstruction)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from localllm.chat.output import OutputParser, fold
from localllm.chat.template import ChatTemplate, InvalidParam, prompt_opens_reasoning
from localllm.chat.types import ToolSpec

TEMPLATES = sorted((Path(__file__).parents[1] / "fixtures" / "templates").glob("*.jinja"))
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<EOS>", "<｜end▁of▁sentence｜>", "<end_of_turn>")
TOOLS = [ToolSpec("get_weather", "Weather for a city", {"type": "object", "properties": {
             "city": {"type": "string"}, "days": {"type": "integer"}, "zip": {"type": "string"}}}),
         ToolSpec("now", "The time", {"type": "object", "properties": {}})]
CALLS = [("abcDEF123", "get_weather", {"city": 'Paris "<tool_call>" [TOOL_CALLS] <think> ☃', "days": 3, "zip": "75001"}),
         ("ghiJKL456", "now", {})]


def assistant_turn(template: ChatTemplate, calls: list[tuple[str, str, dict]]) -> str:
    """The text the template writes for an assistant message that made `calls`."""
    question = [{"role": "user", "content": "Weather?"}]
    made = {"role": "assistant", "content": None, "tool_calls": [
        {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for i, n, a in calls]}
    before, after = template.render(question, tools=TOOLS), template.render([*question, made], tools=TOOLS)
    if prompt_opens_reasoning(before, template.family):  # QwQ, R1: the prompt ends "<think>\n", a past turn not
        before = before.rstrip()[:-len(template.family.think_open or "")]
    turn = after[len(os.path.commonprefix([before, after])):]
    return turn[:min(turn.find(end) for end in END_OF_TURN if end in turn)]


@pytest.mark.parametrize("path", TEMPLATES, ids=[p.stem for p in TEMPLATES])
def test_calls_as_the_template_writes_them_parse_back(path: Path) -> None:
    template = ChatTemplate(path.read_text(), "<BOS>", "<EOS>")
    try:
        calls = CALLS
        turn = assistant_turn(template, calls)
    except InvalidParam as exc:  # Llama 3.x templates: "only supports single tool-calls at once"
        assert "single tool-call" in str(exc)
        calls = CALLS[:1]
        turn = assistant_turn(template, calls)
    for chunks in ([turn], list(turn)):
        parser = OutputParser(template.family, parse_tools=True, tools=TOOLS)  # XML values are typed by schema
        events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()
        answer = fold(events)
        assert (answer.content, answer.reasoning) == ("", ""), turn
        assert [(c.name, json.loads(c.arguments)) for c in answer.tool_calls] == [(n, a) for _, n, a in calls], turn
        if template.family.name == "mistral" and calls[0][0] in turn:  # ids the template wrote come back
            assert [c.id for c in answer.tool_calls] == [i for i, _, _ in calls]


def test_every_family_is_among_the_templates() -> None:
    families = {ChatTemplate(p.read_text(), "<BOS>", "<EOS>").family.name for p in TEMPLATES}
    assert families == {"hermes", "llama3", "mistral", "generic"}
