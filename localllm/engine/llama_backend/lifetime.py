"""When llama.cpp memory may be freed: only once no thread is inside a call that uses it."""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from localllm.engine.errors import BackendError

F = TypeVar("F", bound=Callable[..., Any])


class BackendClosed(BackendError):
    """The model was unloaded or the server is stopping."""


class OpenGuard:
    """Counts calls into llama.cpp from threads other than the engine's (tokenising, grammar
    checks, embeddings). `close()` refuses new calls and waits for running ones, so the
    caller may free the model right after it returns."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._num_users = 0
        self.closed = False

    def __enter__(self) -> None:
        with self._cond:
            if self.closed:
                raise BackendClosed("the model is closed")
            self._num_users += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._cond:
            self._num_users -= 1
            if self._num_users == 0:
                self._cond.notify_all()

    def close(self) -> None:
        """Blocks until every guarded call has returned. Idempotent."""
        with self._cond:
            self.closed = True
            self._cond.wait_for(lambda: self._num_users == 0)


def while_open(method: F) -> F:
    """Runs the method inside `self._guard` (an OpenGuard)."""
    @functools.wraps(method)
    def guarded(self, *args: Any, **kwargs: Any) -> Any:
        with self._guard:
            return method(self, *args, **kwargs)

    return guarded  # type: ignore[return-value]
