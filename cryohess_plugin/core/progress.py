"""The one progress contract of the core: long computations report :class:`Progress` events.

Every core function that takes ``progress=`` calls it with one :class:`Progress` per
step it finishes (an EM round, a Lanczos step, a block of images); the Scipion
protocols turn each event into one run-log line with :meth:`Progress.line`.
"""
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """One finished step of a long computation.

    :param message: what was done, for a log line (e.g. ``"EM round 2/4: noise 0.9"``).
    :param done: units finished so far (images, steps), or None.
    :param total: units in all, or None.
    :param values: numbers a caller may plot (e.g. the Ritz values of a Lanczos step).
    """
    message: str
    done: int = None
    total: int = None
    values: tuple = ()

    def line(self):
        """The event as one run-log line."""
        if self.total:
            return f"{self.message} ({self.done}/{self.total}, {100.0 * self.done / self.total:.0f} %)"
        return self.message


class Reporter:
    """Sends :class:`Progress` events to ``progress`` (which may be None).

    Calling it reports at once; :meth:`every` at most once per ``interval`` seconds, for
    the inner iterations of a long solve.
    """

    def __init__(self, progress, interval=30.0):
        self.progress = progress
        self.interval = interval
        self.last = time.monotonic()

    def __call__(self, message, done=None, total=None, values=()):
        if self.progress is not None:
            self.progress(Progress(message, done, total, tuple(values)))
            self.last = time.monotonic()

    def every(self, message, done=None, total=None):
        """Report ``message`` (a string or a callable giving one) if ``interval`` has passed."""
        if self.progress is not None and time.monotonic() - self.last >= self.interval:
            self(message() if callable(message) else message, done, total)
