"""Ctrl-C and SIGTERM end a run the same way: one KeyboardInterrupt that unwinds to ``main``.

``main`` holds an ``Interrupts`` for its whole run. Both signals raise KeyboardInterrupt, so every
``finally`` tears down what the run made; ``netem._proc.signals_deferred`` holds them while a child
process is started and registered, so that what is being created is torn down too. Beyond that:

- Only the first signal raises. A second one (Ctrl-C pressed again, or the SIGTERM a supervisor sends
  after the terminal's SIGINT) would cut short the teardown step it lands in and leave behind what that
  step was removing; each step has its own timeout, so the teardown still ends within seconds.
- An interrupt that Python dropped is raised again. No exception can leave a finalizer (``__del__``),
  a weakref callback or an at-fork hook: Python prints "Exception ignored in ..." and goes on, and the
  run would carry on and write its results. The unraisable hook sees our KeyboardInterrupt go by and has
  it raised again at the next call or return of the code the main thread goes back to (an exception
  raised by a profile function propagates into the profiled code).
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

#: What ``main`` exits with after an interrupt (128 + SIGINT, as shells report Ctrl-C).
INTERRUPTED_EXIT = 130


class Interrupts:
    """While inside: SIGINT (unless it was ignored) and SIGTERM raise one KeyboardInterrupt."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal that stopped the run
        self._handlers: dict[int, Any] = {}
        self._hook: Any = None
        self._profile: Any = None

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is not threading.main_thread():
            return self  # (handlers can be set, and run, only in the main thread)
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        for sig in (signal.SIGINT, signal.SIGTERM):
            # A program started with Ctrl-C ignored (a background job of a script) keeps ignoring it.
            if sig != signal.SIGINT or signal.getsignal(sig) is not signal.SIG_IGN:
                self._handlers[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        handlers, self._handlers = self._handlers, {}
        try:
            for sig, handler in handlers.items():
                signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        finally:
            if self._hook is not None:
                sys.unraisablehook, self._hook = self._hook, None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return  # stopping already: the teardown goes on
        self.signum = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _unraisable(self, unraisable: Any) -> None:
        if self.signum is not None and isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._profile = sys.getprofile()
            sys.setprofile(self._raise_again)
            return
        self._hook(unraisable)

    def _raise_again(self, frame: FrameType, event: str, arg: object) -> None:
        if frame.f_code is _UNRAISABLE_CODE:  # (the return from _unraisable itself)
            return
        sys.setprofile(self._profile)
        assert self.signum is not None  # set before anything is dropped
        raise KeyboardInterrupt(signal.Signals(self.signum).name)


_UNRAISABLE_CODE = Interrupts._unraisable.__code__


def exception_notes(exc: BaseException) -> list[str]:
    """The notes on ``exc`` and on the exceptions it was raised from or while handling, each on one line.

    ``netem``'s testbed notes there what its teardown could not remove.
    """
    notes: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        notes += [" ".join(str(n).split()) for n in getattr(current, "__notes__", ())]
        current = current.__cause__ or current.__context__
    return notes


def report_interrupted(exc: KeyboardInterrupt) -> int:
    """Say in one line what the interrupt left (nothing, or what teardown could not remove); 130."""
    left = exception_notes(exc)
    what = "; ".join(left) if left else "nodes and testbed torn down"
    print(f"interrupted: {what}; no results file written", file=sys.stderr)
    return INTERRUPTED_EXIT
