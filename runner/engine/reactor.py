"""One thread, many processes: the event loop that attempts run on.

A `Reactor` waits on one epoll instance for every registered fd (output pipes,
pidfds) and on its own wake-up eventfd, then calls the handlers of what became
ready, then the calls other threads queued, then lets every ticker look at the
clock (timeouts, kill grace). The engine's driver owns one and polls it
between its turns, so an attempt costs no thread and no hand-off between
threads: on a 2-core machine a thread per attempt had spent more time passing
the GIL back and forth than running the step's bookkeeping.

Only `wakeup` and `call_soon_threadsafe` may be called from other threads
(and `wakeup` from a signal handler); everything else belongs to the thread
that polls.
"""

from __future__ import annotations

import os
import select
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from typing import Protocol


class Ticker(Protocol):
    """Something with deadlines: asked when it is due, told the time after
    every poll."""

    def deadline(self) -> float | None:
        """The next `time.monotonic()` at which `tick` has work, or None."""
        ...

    def tick(self, now: float) -> None: ...


class Reactor:
    """An epoll instance, a wake-up fd, queued calls and tickers, for one thread.

    epoll itself, not the `selectors` module: its bookkeeping cost more per
    attempt than the system calls it wraps.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._handlers: dict[int, Callable[[], None]] = {}
        self._dropped: set[int] = set()
        """Fds unwatched since the last wait: their events of that wait are
        stale, and the number may belong to a new fd by now."""
        self._calls: deque[Callable[[], None]] = deque()
        self._tickers: dict[Ticker, None] = {}

    def watch(self, fd: int, handler: Callable[[], None]) -> None:
        """Call `handler` whenever `fd` is readable, until `unwatch(fd)`."""
        self._epoll.register(fd, select.EPOLLIN)
        self._handlers[fd] = handler

    def unwatch(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            self._dropped.add(fd)
            with suppress(OSError):  # closed already: epoll forgot it itself
                self._epoll.unregister(fd)

    def add_ticker(self, ticker: Ticker) -> None:
        self._tickers[ticker] = None

    def remove_ticker(self, ticker: Ticker) -> None:
        self._tickers.pop(ticker, None)

    def call_soon_threadsafe(self, call: Callable[[], None]) -> None:
        """Run `call` on the polling thread, at its next poll."""
        self._calls.append(call)
        self.wakeup()

    def wakeup(self) -> None:
        """Make the current or next `poll` return at once."""
        with suppress(OSError):  # closed: nobody is waiting any more
            os.eventfd_write(self._wake, 1)

    def poll(self, timeout: float | None) -> None:
        """Wait up to `timeout` seconds (None: no limit) for anything to do,
        and do it. Returns early when a ticker is due or on `wakeup`."""
        wait = timeout
        if self._tickers:
            now = time.monotonic()
            for ticker in self._tickers:
                due = ticker.deadline()
                if due is not None and (wait is None or due - now < wait):
                    wait = max(0.0, due - now)
        if self._calls:
            wait = 0.0

        self._dropped.clear()
        ready = self._epoll.poll(-1 if wait is None else wait)
        for fd, _ in ready:
            if fd == self._wake:
                with suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            elif fd not in self._dropped:
                self._handlers[fd]()

        while self._calls:
            self._calls.popleft()()

        if self._tickers:
            now = time.monotonic()
            for ticker in list(self._tickers):
                ticker.tick(now)

    def close(self) -> None:
        self._epoll.close()
        wake, self._wake = self._wake, -1
        os.close(wake)
