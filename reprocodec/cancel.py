"""Cooperative cancellation: a per-request token that long-running work polls.

The services give every admitted request a `CancelToken`. It is cancelled when the client
cancels the call or its deadline passes (gRPC tells the server), and when the server stops
after its shutdown grace. Python cannot interrupt a thread, so heavy work polls:

    from reprocodec import cancel

    def encode(self, pixels, ...):
        y = self.g_a(x)
        cancel.check()            # raises CancelledError if the request was abandoned
        z = self.h_a(y)
        cancel.check()
        for level in range(depth):   # loops: once per iteration that takes >~10 ms
            cancel.check()
            ...

`cancel.check()` reads the token of the request the calling thread is serving (a context
variable set by the service around the work); outside a service (CLI, tests, notebooks) there
is no token and it returns at once. It costs well under a microsecond, so call it between
stages, never inside a per-element loop. Work started on other threads (a pool) does not see
the caller's token: pass `cancel.current()` along and call `token.check()` there.

`CancelledError` is a `ReprocodecError`: the services answer DEADLINE_EXCEEDED (deadline
passed), CANCELLED (the client cancelled) or UNAVAILABLE (server shutting down: nothing was
returned, so a retry on another replica is safe). Codecs must let it propagate (do not catch
it in a broad `except Exception` that turns it into InputError) and hold no state that an
exception at a check point would corrupt.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator

from .errors import ReprocodecError

__all__ = ["CancelToken", "CancelledError", "check", "current", "using"]

# reason -> (gRPC status name, what the caller is told)
_REASONS = {
    "deadline": ("DEADLINE_EXCEEDED",
                 "the request's deadline passed while it was being processed; the server "
                 "stopped the work. Retry with a longer deadline"),
    "cancelled": ("CANCELLED", "the client cancelled the request; the server stopped the work"),
    "shutdown": ("UNAVAILABLE",
                 "the server is shutting down and stopped this request before it finished; "
                 "nothing was returned, retry on another replica"),
}


class CancelledError(ReprocodecError):
    """The request this work belongs to was cancelled; `reason` is deadline, cancelled or
    shutdown (the failure-metric label), `grpc_status` the status the service answers with."""

    def __init__(self, reason: str, detail: str = "") -> None:
        status, message = _REASONS.get(reason, _REASONS["cancelled"])
        super().__init__(message + (f" ({detail})" if detail else ""))
        self.reason = reason if reason in _REASONS else "cancelled"
        self.grpc_status = status


class CancelToken:
    """Set once (first reason wins); `check()` also trips by itself when `deadline` (a
    time.monotonic() value) has passed, even if nobody called `cancel`."""

    def __init__(self, deadline: float | None = None) -> None:
        self.deadline = deadline
        self._event = threading.Event()
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self, reason: str = "cancelled") -> bool:
        """Cancel (True) unless already cancelled (False: the first reason stays)."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
            callbacks, self._callbacks = self._callbacks, []
        self._event.set()
        for fn in callbacks:
            fn()
        return True

    def on_cancel(self, fn: Callable[[], None]) -> None:
        """Call fn() once when the token is cancelled (at once if it already is)."""
        with self._lock:
            if self._reason is None:
                self._callbacks.append(fn)
                return
        fn()

    @property
    def reason(self) -> str | None:
        """Why it was cancelled (None while it is not); the deadline counts as "deadline"."""
        if self._reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel("deadline")
        return self._reason

    @property
    def cancelled(self) -> bool:
        return self.reason is not None

    def remaining(self) -> float | None:
        """Seconds to the deadline (None: no deadline)."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise CancelledError when cancelled or past the deadline; else return at once."""
        reason = self.reason
        if reason is not None:
            raise CancelledError(reason)

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s, waking early when cancelled; True if cancelled."""
        if self.deadline is not None:
            timeout = min(timeout, max(self.deadline - time.monotonic(), 0.0))
        self._event.wait(timeout)
        return self.cancelled


_current: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar(
    "reprocodec_cancel_token", default=None)


def current() -> CancelToken | None:
    """The token of the request this thread is serving (None outside a service)."""
    return _current.get()


def check() -> None:
    """Raise CancelledError if the current request was cancelled; a no-op without one."""
    token = _current.get()
    if token is not None:
        token.check()


@contextlib.contextmanager
def using(token: CancelToken | None) -> Iterator[CancelToken | None]:
    """Make `token` the current one for the duration of the block (this thread only)."""
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)
