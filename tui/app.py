"""The Textual app: three modes (dashboard, chat, models), a help overlay, and the poll worker."""
from __future__ import annotations

import asyncio
import time

from textual import work
from textual.app import App
from textual.binding import Binding
from textual.reactive import reactive

from tui.client import Client, ServerError, ServerUnreachable
from tui.messages import Connection, ConnectionChanged, StatsUpdated
from tui.prometheus import parse
from tui.screens.chat import ChatScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.help import HelpScreen
from tui.screens.models import ModelsScreen
from tui.snapshot import Snapshot, Tracker

MAX_RETRY_S = 5.0
THEMES = ("textual-dark", "textual-light")


class LocalLLMApp(App[None]):
    TITLE = "localllm"
    CSS_PATH = "styles/app.tcss"
    ENABLE_COMMAND_PALETTE = False
    MODES = {"dashboard": DashboardScreen, "chat": ChatScreen, "models": ModelsScreen}
    DEFAULT_MODE = "dashboard"
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("f2", "switch_mode('dashboard')", "Dash"),
        Binding("f3", "switch_mode('chat')", "Chat"),
        Binding("f4", "switch_mode('models')", "Models"),
        Binding("f5", "toggle_theme", "Theme"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("question_mark", "help", show=False),
        Binding("d", "switch_mode('dashboard')", show=False),
        Binding("c", "switch_mode('chat')", show=False),
        Binding("m", "switch_mode('models')", show=False),
        Binding("t", "toggle_theme", show=False),
        Binding("q", "quit", show=False),
    ]

    snapshot: reactive[Snapshot | None] = reactive(None, always_update=True)
    connection: reactive[Connection] = reactive(Connection("connecting", ""), always_update=True)

    def __init__(self, client: Client, *, poll_interval_s: float = 1.0, poll: bool = True,
                 max_tokens: int = 512, dark: bool = True, max_retry_s: float = MAX_RETRY_S) -> None:
        super().__init__()
        self.client = client
        self.poll_interval_s = poll_interval_s
        self.max_tokens = max_tokens
        self.max_retry_s = max_retry_s
        self._poll = poll
        self.theme = THEMES[0] if dark else THEMES[1]
        self.set_reactive(LocalLLMApp.connection, Connection("connecting", client.url))

    def on_mount(self) -> None:
        if self._poll:
            self.poll_server()

    async def on_unmount(self) -> None:
        await self.client.close()

    def on_stats_updated(self, message: StatsUpdated) -> None:
        self.snapshot = message.snapshot

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        self.connection = message.connection

    @work(exclusive=True, group="poll")
    async def poll_server(self) -> None:
        """Polls /v1/stats and /metrics forever; on failure says so and retries with backoff."""
        tracker = Tracker()
        num_failures = 0
        while True:
            try:
                stats = await self.client.stats()
            except (ServerError, ServerUnreachable) as exc:
                num_failures += 1
                delay_s = min(self.poll_interval_s * 2 ** (num_failures - 1), self.max_retry_s)
                self.post_message(ConnectionChanged(_failure(self.client.url, exc, delay_s)))
                await asyncio.sleep(delay_s)
                continue
            try:
                scrape = parse(await self.client.metrics())
            except (ServerError, ServerUnreachable):
                scrape = None  # the dashboard still shows what /v1/stats gave
            if num_failures or not self.connection.is_up:
                self.post_message(ConnectionChanged(Connection("connected", self.client.url)))
            num_failures = 0
            self.post_message(StatsUpdated(tracker.update(stats, scrape, time.monotonic())))
            await asyncio.sleep(self.poll_interval_s)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[1] if self.theme == THEMES[0] else THEMES[0]


def _failure(url: str, exc: Exception, retry_in_s: float) -> Connection:
    if isinstance(exc, ServerError):
        if exc.status == 401:
            return Connection("unauthorized", url, "pass the server's key with --api-key", retry_in_s)
        return Connection("failing", url, str(exc), retry_in_s)
    return Connection("unreachable", url, str(exc), retry_in_s)
