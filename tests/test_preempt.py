"""Stopping cleanly: the signal flag, its handlers, the Preempted message and the exit codes."""

import os
import signal
import time

import pytest

from jaxtickets import errors
from jaxtickets.run import preempt


def test_preemption_watch_restores_the_previous_handler():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *a: seen.append(a))
  previous_int = signal.getsignal(signal.SIGINT)
  try:
    watch = preempt.PreemptionWatch().install()
    assert not watch(1, False)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert watch(2, False) and watch.reason == "SIGTERM" and not seen
    watch.restore()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert len(seen) == 1
    assert signal.getsignal(signal.SIGINT) is previous_int
    # Ctrl-C sets the flag once; a second one is Python's KeyboardInterrupt again.
    watch = preempt.PreemptionWatch().install()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)
    assert watch(3, False) and watch.reason == "Ctrl-C (SIGINT)"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    watch.restore()
    assert signal.getsignal(signal.SIGINT) is previous_int
  finally:
    signal.signal(signal.SIGTERM, previous)
    signal.signal(signal.SIGINT, previous_int)


def test_exit_codes_say_preempted_or_interrupted(capsys):
  for reason, code in (("SIGTERM", 75), ("Ctrl-C (SIGINT)", 130)):
    def work():
      raise preempt.Preempted(4, "[rep 0 imp round 1]", reason, "step 4")

    with pytest.raises(SystemExit) as e:
      errors.run_command(work, "jaxtickets.main")
    assert e.value.code == code
    out = capsys.readouterr().out
    assert f"Stopped by {reason} at step 4 of [rep 0 imp round 1]" in out and "run the same command again" in out


def test_words_after_a_command_are_one_sentence_and_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    errors.run_command(lambda: pytest.fail("the work must not run"), "jaxtickets.report", ["report", "runs/adain"])
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == ("error: Unexpected arguments: runs/adain: give every setting as a "
                                             "--flag.")
