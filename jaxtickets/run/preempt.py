"""Stopping a run cleanly: SIGTERM, Ctrl-C and JAX's preemption notice, the exception they raise, the exit codes.

The signal handlers only set a flag (no I/O in a handler); the train loop reads it after each step, saves a
checkpoint and raises Preempted, a Stopped that the command lines' runner (errors.run_command) answers with how to
resume (the same command) and an exit status a scheduler understands.
"""

import signal
import threading

import jax
import numpy as np

from jaxtickets.errors import Stopped

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL ("try again"): job schedulers restart the job
INTERRUPTED_EXIT_CODE = 130  # the shell's code for Ctrl-C: the user stopped it, a scheduler should not retry


class Preempted(Stopped):
  """Training stopped at a preemption notice or Ctrl-C after saving a checkpoint; the same command resumes."""

  def __init__(self, step: int, label: str, reason: str, where: str):
    super().__init__(f"Stopped by {reason} at step {step} of {label.strip()}; the checkpoint is {where}.")
    self.step, self.label, self.reason, self.where = step, label, reason, where
    self.exit_code = INTERRUPTED_EXIT_CODE if "SIGINT" in reason else PREEMPTED_EXIT_CODE


class PreemptionWatch:
  """SIGTERM, Ctrl-C (SIGINT) and JAX's preemption notice as a host-side flag that the train loop reads after each step.

  The step finishes, a checkpoint is saved and the command prints how to resume, instead of a KeyboardInterrupt
  tearing through the input pipeline's threads. A second Ctrl-C gets Python's default (an immediate
  KeyboardInterrupt). install() replaces the handlers and restore() puts the previous ones back. In a
  multi-process run the processes agree at log and checkpoint intervals (a tiny allgather), or at JAX's
  preemption sync point where the preemption service runs.
  """

  SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}

  def __init__(self):
    self.reason: str | None = None
    self._previous = {}
    self._sync_point = True

  def install(self) -> "PreemptionWatch":
    if threading.current_thread() is threading.main_thread():  # Python allows handlers in the main thread only
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._on_signal)
    return self

  def restore(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def __enter__(self) -> "PreemptionWatch":
    return self.install()

  def __exit__(self, *exc) -> None:
    self.restore()

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    self.reason = self.reason or self.SIGNALS.get(signum, f"signal {signum}")
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

  def __call__(self, step: int, synced: bool) -> bool:
    """Whether to checkpoint and stop after `step`; `synced` marks steps where every process asks."""
    if self._sync_point:
      try:
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
          self.reason = self.reason or "JAX's preemption notice"
          return True
      except Exception:  # pylint: disable=broad-except  (no preemption service: SIGTERM alone)
        self._sync_point = False
    if jax.process_count() == 1:
      return self.reason is not None
    if not synced:
      return False
    from jax.experimental import multihost_utils

    if np.any(multihost_utils.process_allgather(np.int32(self.reason is not None))):
      self.reason = self.reason or "SIGTERM on another process"
      return True
    return False
