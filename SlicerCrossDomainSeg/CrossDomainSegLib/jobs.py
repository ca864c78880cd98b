"""Work that runs off the GUI thread: a segmentation or a click refinement on a worker thread.

The worker never touches MRML: it computes, reports progress through a callback and stops at the
engine's next stage when cancelled. The front end polls `done` on its own thread and then hands the
job to the Logic's `finish...` method, which writes the result into the scene there.
"""

from __future__ import annotations

import threading
from typing import Callable


class Job:
    """`run(report, cancelled) -> result` on a worker thread; poll `done`, then read `outcome()`.

    `progress(fraction, message)` is called from the worker thread: a GUI must hand it over to its
    own thread rather than touch widgets there.
    """

    def __init__(self, run: Callable, progress: Callable | None = None, name: str = "CrossDomainSeg job"):
        self.fraction = 0.0
        self.message = "starting"
        self._result = None
        self._error: BaseException | None = None
        self._progress = progress
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(run,), daemon=True, name=name)
        self._thread.start()

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the work to stop at its next stage; `outcome` then raises the engine's cancel error."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return self.done

    def report(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), str(message)
        if self._progress is not None:
            self._progress(self.fraction, self.message)

    def outcome(self):
        """The worker's result after waiting for it; re-raises the worker's error here."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._result

    def _work(self, run: Callable) -> None:
        try:
            self._result = run(self.report, self._cancel.is_set)
        except BaseException as error:  # handed over to the calling thread by `outcome`
            self._error = error
