"""Keys and what the figures mean, over whichever screen is showing."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown, Static

KEYS = (
    ("F2  d", "dashboard"), ("F3  c", "chat"), ("F4  m", "models"), ("F5  t", "light / dark theme"),
    ("F1  ?", "this help (Esc closes)"), ("Ctrl+Q", "quit"),
    ("Enter", "chat: send · models: memory plan of the selected row"),
    ("Esc", "chat: stop the reply mid-stream"), ("Ctrl+L", "chat: new conversation"),
    ("p  v", "models: pull a model · show its plan"),
    ("l  u", "models: load / unload (only when the server offers them)"),
)

ABOUT = """\
Letter keys work when no text box has the focus (Tab moves it).

**Dashboard.** Tokens/sec are the server's own rolling rates; the chart shows
generation tokens/sec since the TUI started (3 minutes at most). TTFT (time to
first token) and ITL (inter-token latency) p50/p95 are estimated from the
server's histogram buckets over the last 60 s; *base* is the p95 since the
server started. KV used is cache cells used of all cells; *prefix … hit* is
prefix cache hits (prompt tokens reused from a slot, or from a prefix state
saved on disk) per admitted request; response cache hits never reach the
engine.

**Alerts** appear when a p95 latency exceeds twice its base, more than 1% of
responses are errors, or a GPU's memory is over 95% full.

**Memory** (GPU, CPU, RAM, server RSS) comes from the server, so it describes
the machine the server runs on, wherever that is.
"""


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "../styles/help.tcss"
    BINDINGS = [Binding("escape,f1,question_mark,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        keys = Table.grid(padding=(0, 2))
        keys.add_column(style="bold", no_wrap=True)
        keys.add_column()
        for key, action in KEYS:
            keys.add_row(key, action)
        with VerticalScroll(id="help-body") as body:
            body.border_title = "localllm TUI: keys"
            yield Static(keys, id="help-keys")
            yield Markdown(ABOUT)
