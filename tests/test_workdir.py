"""Tests for jaxtickets.store.workdir: where a run's files are, the workdir lock."""

import os

import pytest

from jaxtickets.store import checkpoint, workdir as workdir_lib
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
  # Another host's lock with a recent heartbeat: refused; with a heartbeat older than STALE_SECONDS (a preempted
  # slice's host that is gone), taken over.
  import time
  checkpoint.save_json(tmp_path / 'run.lock', {'pid': 1, 'host': 'elsewhere', 'beat': time.time() - 5})
  with pytest.raises(UserError, match=r'host elsewhere.*beat \d+ s ago'):
    workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire()
  old = time.time() - workdir_lib.WorkdirLock.STALE_SECONDS - 1
  checkpoint.save_json(tmp_path / 'run.lock', {'pid': 1, 'host': 'elsewhere', 'beat': old})
  workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire().release()
  assert 'stale lock' in logs[-1] and 'heartbeat stopped' in logs[-1]
  # An unreadable (half-written) lock is taken over.
  (tmp_path / 'run.lock').write_text('{"pi')
  workdir_lib.WorkdirLock(tmp_path, log=logs.append).acquire().release()
  assert 'unreadable' in logs[-1]


def test_lock_heartbeat_refreshes(tmp_path, monkeypatch):
  """The holder rewrites its beat, so a long run on another host never looks stale to a second run."""
  import time
  monkeypatch.setattr(workdir_lib.WorkdirLock, 'BEAT_SECONDS', 0.05)
  lock = workdir_lib.WorkdirLock(tmp_path).acquire()
  try:
    first = checkpoint.load_json(tmp_path / 'run.lock')['beat']
    deadline = time.time() + 10
    while checkpoint.load_json(tmp_path / 'run.lock')['beat'] == first and time.time() < deadline:
      time.sleep(0.05)
    assert checkpoint.load_json(tmp_path / 'run.lock')['beat'] > first
  finally:
    lock.release()
  assert not (tmp_path / 'run.lock').exists()  # released: the heartbeat thread stopped before the file went
