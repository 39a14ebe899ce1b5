"""Keys and what the figures mean, over whichever screen is showing."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# localllm TUI

| key | action |
|-----|--------|
| F2 / d | dashboard |
| F3 / c | chat |
| F4 / m | models |
| F5 / t | light or dark theme |
| F1 / ? | this help (Esc closes) |
| Ctrl+Q | quit |
| Enter | chat: send · models: show the plan |
| Esc | chat: stop the reply |
| Ctrl+L | chat: new conversation |
| p / v | models: pull a model / plan |
| l / u | models: load / unload (when the server offers them) |

Letter keys work when no text box has the focus (Tab moves it).

**Dashboard.** Tokens/sec come from the server's own rolling rates; the chart
shows generation tokens/sec since the TUI started (3 minutes at most).
TTFT (time to first token) and ITL (inter-token latency) p50/p95 are estimated
from the server's histogram buckets over the last 60 s; *base* is the p95 since
the server started. KV cache is cells used of all cells; cache hits are prompt
prefix hits per admitted request.

**Alerts** appear when a p95 latency exceeds twice its baseline, more than 1% of
responses are errors, or a GPU's memory is over 95% full.

**Memory** figures (GPU, CPU, RAM, server RSS) come from the server, so they
describe the machine the server runs on.
"""


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "../styles/help.tcss"
    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)
