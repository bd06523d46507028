"""Stop requests: SIGTERM / SIGINT / SIGUSR1 (preemption, `timeout`, SLURM, `docker stop`)."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("mrcnn.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopFlag:
    """Set by a stop signal: the training loop checkpoints at the current step and exits 0.

    A second SIGINT (Ctrl-C twice) stops at once."""

    def __init__(self):
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received signal %d: will save a checkpoint and stop", signum)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
