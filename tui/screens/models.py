"""Served models, pull with a progress bar, the memory plan; load/unload when the server offers them."""
from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, ProgressBar, Static

from tui.client import ServerError, ServerUnreachable
from tui.messages import Connection
from tui.snapshot import format_bytes
from tui.widgets.connection_bar import ConnectionBar

LOAD_ROUTE = "/admin/models/load"
UNLOAD_ROUTE = "/admin/models/unload"


class ModelsScreen(Screen):
    CSS_PATH = "../styles/models.tcss"
    BINDINGS = [
        Binding("p", "focus_pull", "Pull"),
        Binding("v", "plan", "Plan"),
        Binding("l", "load", "Load"),
        Binding("u", "unload", "Unload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.routes: set[str] = set()
        self.num_progress_events = 0
        """Download progress events drawn during the last pull."""
        self._listed = False

    def compose(self) -> ComposeResult:
        yield ConnectionBar()
        yield DataTable(id="models-table", cursor_type="row")
        with Horizontal(id="pull-row"):
            yield Input(placeholder="name or ORG/REPO/FILE.gguf to pull", id="pull-name")
            yield Button("Pull", id="pull-button", variant="primary")
        yield ProgressBar(id="pull-progress", show_eta=False)
        yield Static("", id="pull-status")
        with VerticalScroll(id="plan-box"):
            yield Static("Select a model and press v (or Enter) for its memory plan.", id="plan")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#models-table", DataTable)
        table.border_title = "Models"
        table.add_columns("model", "owner", "state")
        self.query_one("#plan-box").border_title = "Memory plan"
        self.watch(self.app, "connection", self._connection_changed)

    def _connection_changed(self, connection: Connection) -> None:
        if connection.is_up and not self._listed:
            self.refresh_models()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Load/unload only exist when the server's /openapi.json lists their routes."""
        if action == "load":
            return LOAD_ROUTE in self.routes
        if action == "unload":
            return UNLOAD_ROUTE in self.routes
        return True

    @work(exclusive=True, group="list")
    async def refresh_models(self) -> None:
        client = self.app.client
        try:
            models = await client.models()
            self.routes = await client.routes()
        except (ServerError, ServerUnreachable) as exc:
            self.query_one("#pull-status", Static).update(f"cannot list models: {exc}")
            return
        self._listed = True
        self.refresh_bindings()
        table = self.query_one("#models-table", DataTable)
        table.clear()
        for model in models:
            table.add_row(model["id"], model.get("owned_by", ""), "served", key=model["id"])

    def selected_model(self) -> str | None:
        table = self.query_one("#models-table", DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def action_focus_pull(self) -> None:
        self.query_one("#pull-name", Input).focus()

    @on(Input.Submitted, "#pull-name")
    @on(Button.Pressed, "#pull-button")
    def start_pull(self) -> None:
        name = self.query_one("#pull-name", Input).value.strip()
        if name:
            self.pull(name)

    @work(exclusive=True, group="pull")
    async def pull(self, name: str) -> None:
        bar = self.query_one("#pull-progress", ProgressBar)
        status = self.query_one("#pull-status", Static)
        bar.update(total=None, progress=0)
        bar.add_class("-active")
        self.num_progress_events = 0
        status.update(f"pulling {name} …")
        try:
            async for event in self.app.client.pull(name):
                if event.get("status") == "downloading":
                    done, total = event.get("downloaded_bytes") or 0, event.get("total_bytes")
                    bar.update(total=total or None, progress=done)
                    self.num_progress_events += 1
                    status.update(f"downloading {name}: {format_bytes(done)} of {format_bytes(total)}")
                elif event.get("status") == "done":
                    bar.update(total=bar.total or 1, progress=bar.total or 1)
                    status.update(f"pulled {event.get('name', name)} to {event.get('path', '?')}")
                    self.show_plan(event.get("name", name))
                elif event.get("status") == "error":
                    status.update(f"pull failed: {event.get('message', '?')}")
        except (ServerError, ServerUnreachable) as exc:
            status.update(f"pull failed: {exc}")

    @on(DataTable.RowSelected, "#models-table")
    def action_plan(self) -> None:
        model = self.selected_model()
        if model is not None:
            self.show_plan(model)

    @work(exclusive=True, group="plan")
    async def show_plan(self, model: str) -> None:
        plan = self.query_one("#plan", Static)
        plan.update(f"planning {model} …")
        try:
            body = await self.app.client.plan(model)
        except (ServerError, ServerUnreachable) as exc:
            plan.update(f"no plan for {model}: {exc}")
            return
        plan.update(f"{model}\n{body.get('explanation') or body}")

    def action_load(self) -> None:
        self._admin("load")

    def action_unload(self) -> None:
        self._admin("unload")

    @work(exclusive=True, group="admin")
    async def _admin(self, verb: str) -> None:
        model = self.selected_model() or self.query_one("#pull-name", Input).value.strip()
        status = self.query_one("#pull-status", Static)
        if not model:
            status.update(f"choose a model to {verb}")
            return
        status.update(f"{verb}ing {model} …")
        try:
            await (self.app.client.load(model) if verb == "load" else self.app.client.unload(model))
        except (ServerError, ServerUnreachable) as exc:
            status.update(f"{verb} failed: {exc}")
            return
        status.update(f"{verb}ed {model}")
        self.refresh_models()
