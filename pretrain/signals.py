"""Graceful stop: SIGUSR1 / SIGTERM ask the run to finish its current step, save a checkpoint and exit 0.

The handler only records the request; the training loop polls :attr:`StopRequest.requested` between optimizer
steps and agrees on it across ranks (a signal may reach the ranks at slightly different moments), so every
rank stops after the same step. SLURM sends SIGUSR1 ahead of the time limit (``--signal=B:USR1@...``) and
SIGTERM on preemption or ``scancel``; after the save the job can be requeued and resumes from ``latest``.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """Installs handlers for ``signals`` (main thread only) and remembers the first one received."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signal_name: str | None = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be installed from the main thread (e.g. not inside some test runners)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
