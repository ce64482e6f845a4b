"""A graceful stop on SIGTERM (what SLURM, Kubernetes and spot preemption send) and SIGINT (Ctrl-C).

While a `GracefulStop` is active, the first of those signals only sets `requested`: the work
stops at its next safe point (training after the current step, with a checkpoint; sampling after
the current batch) and raises `Stopped`. A second signal stops at once.
"""
import signal
import sys
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The work stopped at a safe point on a signal; the message says where to resume."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's code for a process ended by that signal


class GracefulStop:
    def __init__(self, what="the current step"):
        self.what, self.signum, self._previous = what, None, {}

    @property
    def requested(self):
        return self.signum is not None

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal: stop now
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after {self.what} (send it again to stop at "
              "once)", file=sys.stderr, flush=True)

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
            for signum in SIGNALS:
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        self._restore()
        return False


def stop_agreed(channel, stop):
    """Whether any process of a launch was asked to stop (channel: its vlgen.core.host_channel):
    every process stops at the same point. One small CPU collective per call with several
    processes, which never waits for the GPU."""
    return channel.any(stop.requested)
