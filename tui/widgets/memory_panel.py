"""Per GPU: name, utilisation, memory; host CPU and RAM; the server process's RSS. From /v1/stats."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.snapshot import GPU_MEMORY_ALERT, Snapshot, format_bytes


class MemoryPanel(Static):
    def on_mount(self) -> None:
        self.border_title = "Memory"
        self.watch(self.app, "snapshot", self._show)

    def _show(self, snapshot: Snapshot | None) -> None:
        host = (snapshot.get("host", {}) or {}) if snapshot else {}
        if not host:
            self.update("no host figures yet")
            return
        text = Text()
        text.append("CPU ", style="bold").append(f"{host.get('cpu_percent', 0):.0f}% of {host.get('cpu_count', '?')} cores\n")
        total, available = host.get("ram_total_bytes"), host.get("ram_available_bytes")
        used = total - available if total is not None and available is not None else None
        text.append("RAM ", style="bold").append(f"{format_bytes(used)} / {format_bytes(total)}\n")
        text.append("server RSS ", style="bold").append(f"{format_bytes(host.get('process_rss_bytes'))}\n")
        gpus = host.get("gpus") or []
        if not gpus:
            text.append("No GPU", style="bold").append(f": {host.get('gpu_status') or 'none reported'}", style="dim")
        for gpu in gpus:
            used, total = gpu.get("memory_used_bytes") or 0, gpu.get("memory_total_bytes") or 0
            full = total and used / total > GPU_MEMORY_ALERT
            text.append(f"GPU{gpu.get('index', '?')} ", style="bold").append(f"{gpu.get('name', '?')}\n")
            text.append(f" util {gpu.get('utilization_percent', 0):.0f}%\n")
            share = f" ({used / total:.0%})" if total else ""
            text.append(f" mem {used / 2**30:.1f}/{total / 2**30:.1f} GiB{share}\n", style="bold red" if full else "")
        text.rstrip()
        self.update(text)
