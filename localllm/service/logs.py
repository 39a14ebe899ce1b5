"""Logging set-up: plain timestamped lines on a terminal, journald-friendly under systemd.

Under systemd (stderr is the stream named by $JOURNAL_STREAM) lines carry no timestamp
(journald adds its own) and start with a `<N>` syslog priority, which journald parses
(SyslogLevelPrefix=yes is its default) so `journalctl -p warning` works.
"""
from __future__ import annotations

import logging
import os
import sys

_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<6>localllm.requests: message`: priority prefix, no timestamp."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _SYSLOG_PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        # a multi-line record (traceback) keeps its priority on every line
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


def stderr_is_journal(environ: dict[str, str] | None = None) -> bool:
    """True when stderr is connected to journald ($JOURNAL_STREAM is `device:inode` of it)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return True  # set but unverifiable: trust it
    return (info.st_dev, info.st_ino) == (device, inode)


def configure_logging(level: str = "info", *, journal: bool | None = None) -> None:
    """Root logging to stderr at `level`; journald format when `journal` (default: detected)."""
    journal = stderr_is_journal() if journal is None else journal
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter() if journal
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
