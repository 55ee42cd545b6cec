"""The one way a run stops on a signal: the first sets a stop flag, a second one aborts.

`newsletter send`, `worker`, the scheduler and a `publish` called from a script all stop the
same way: the batch in flight finishes and is recorded, and nothing is half-written.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on(stop: threading.Event, first: Callable[[str], None], again: Callable[[int], None],
            which: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """While inside: the first of `which` sets `stop` and calls `first(name)`; another one
    calls `again(signum)` (which aborts). The previous handlers come back afterwards; outside
    the main thread (where no handler can be set) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            again(signum)
            return
        stop.set()
        first(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in which}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def name_of(signum: int) -> str:
    """SIGINT, SIGTERM: the name a log line gives a signal."""
    return signal.Signals(signum).name


def _interrupt(_signum: int) -> None:
    raise KeyboardInterrupt


@contextmanager
def ctrl_c_stops(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C only sets `stop`, the second interrupts; a caller's own SIGINT handler
    (the CLI's, the scheduler's) is left alone."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    with stop_on(stop, lambda _name: None, _interrupt, (signal.SIGINT,)):
        yield
