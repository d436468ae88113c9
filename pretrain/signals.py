"""Graceful stop: SIGUSR1 / SIGTERM / SIGINT ask the run to finish its current step, save a checkpoint and exit.

The handler only records the request; the training loop polls :attr:`StopRequest.requested` between optimizer
steps and agrees on it across ranks (a signal may reach the ranks at slightly different moments, or only some of
them), so every rank stops after the same step. SLURM sends SIGUSR1 ahead of the time limit (``--signal=B:USR1@...``)
and SIGTERM on preemption or ``scancel``; after the save the job can be requeued and resumes from ``latest`` (exit 0).

SIGINT is Ctrl-C in a terminal: the same save, then exit 130 (the shell's code for an interrupt). Ctrl-C reaches
every process of the terminal's process group, launchers included, and a launcher may forward it once more to its
workers (torchrun does), so a second SIGINT within :data:`REPEAT_WINDOW_S` of the first counts as the same Ctrl-C.
A later one is a user's second Ctrl-C: SIGINT goes back to its default action and is re-raised, which ends the
process at once, without saving.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
REPEAT_WINDOW_S = 1.0
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process ended by Ctrl-C


class StopRequest:
    """Installs handlers for ``signals`` (main thread only) and remembers the first one received."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signal_name: str | None = None
        self.interrupted = False  # a SIGINT arrived (the run then exits 130 after saving)
        self._first_sigint: float | None = None
        self._previous = {}
        if threading.current_thread() is not threading.main_thread():
            return  # handlers can only be installed from the main thread (e.g. not inside some test runners)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupt()
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name

    def _interrupt(self) -> None:
        now = time.monotonic()
        if self._first_sigint is None:
            self._first_sigint, self.interrupted = now, True
            if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0":  # one line, not one per rank
                print("interrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort without "
                      "saving)", file=sys.stderr, flush=True)
        elif now - self._first_sigint > REPEAT_WINDOW_S:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
