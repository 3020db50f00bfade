"""Tests for jaxtickets.workdir: where a run's files are, the workdir lock."""

import os

import pytest

from jaxtickets import checkpoint, workdir as workdir_lib
from jaxtickets.errors import UserError


def test_ticket_dirs_lists_every_round_folder_by_branch_replicate_and_round(tmp_path):
  for branch, rep, round_ in (("oneshot", 0, 1), ("imp", 1, 0), ("imp", 0, 10), ("imp", 0, 2)):
    os.makedirs(workdir_lib.ticket_dir(str(tmp_path), branch, round_, rep))
  os.makedirs(tmp_path / "tickets" / "imp" / "notes")  # not a replicate: not listed
  found = [(b, rep, r) for b, rep, r, _ in workdir_lib.ticket_dirs(str(tmp_path))]
  assert found == [("imp", 0, 2), ("imp", 0, 10), ("imp", 1, 0), ("oneshot", 0, 1)]
  path = workdir_lib.ticket_dir(str(tmp_path), "imp", 2, 1)
  assert path == os.path.join(str(tmp_path), "tickets", "imp", "rep_1", "round_02")
  assert workdir_lib.run_of_ticket(path) == str(tmp_path)
  assert workdir_lib.ticket_dirs(str(tmp_path / "none")) == []


def test_workdir_lock(tmp_path):
  import subprocess
  import sys

  logs = []
  lock = workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire()
  owner = checkpoint.load_json(tmp_path / 'run.lock')
  assert owner['pid'] == os.getpid() and owner['host']
  lock.release()
  assert not (tmp_path / 'run.lock').exists()
  # A live owner on this host: refused with a sentence naming the PID.
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    checkpoint.save_json(tmp_path / 'run.lock', {'pid': sleeper.pid, 'host': owner['host'], 'started': 'now'})
    with pytest.raises(UserError, match=rf"Another run \(PID {sleeper.pid} on .*\) is using the workdir"):
      workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire()
  finally:
    sleeper.kill()
    sleeper.wait()
  # The same PID, now dead: a stale lock, taken over with a warning.
  lock = workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire()
  assert 'stale lock' in logs[-1] and str(sleeper.pid) in logs[-1]
  assert checkpoint.load_json(tmp_path / 'run.lock')['pid'] == os.getpid()
  lock.release()
  # Another host's lock cannot be checked: refused, saying how to clear it.
  checkpoint.save_json(tmp_path / 'run.lock', {'pid': 1, 'host': 'elsewhere'})
  with pytest.raises(UserError, match='host elsewhere.*delete the lock file only if'):
    workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire()
  # An unreadable (half-written) lock is taken over.
  (tmp_path / 'run.lock').write_text('{"pi')
  workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire().release()
  assert 'unreadable' in logs[-1]
