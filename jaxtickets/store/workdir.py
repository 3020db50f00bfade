"""A run's workdir: the name of everything in it, and the functions that find, read and check those files.

  config.json                        the run's resolved config (a resumed run must have the same, see
                                     config.RESUME_SAFE_FIELDS)
  vgg.json                           the VGG the run trains with (weights.describe_vgg: path, SHA-256, released or
                                     not) and the directory it was launched from (a resumed run must have the same file)
  run.lock                           the PID and host of the run using the workdir
  init/rep_<r>/theta_<k>/            replicate r's weights at step k: theta_0, and theta_k that pruned rounds rewind to
  tickets/<branch>/rep_<r>/round_NN/ one ticket per branch x replicate x round (r = 0 .. imp.replicates - 1)
  state/                             the running rounds' train-state checkpoints
  skipped_images.json                the unreadable images skipped so far (a data.SkipLog summary)
  results.csv, summary.csv, summary.json   the tables (results/tables.py)
  pairs.csv                          every ticket's per-pair metrics, from which summary.csv can be recomputed
  tensorboard/                       TensorBoard event files (monitor.py)
  report.md and its figures          reports/run_report.py
  stability/                         stability.py's copies, rep_<r>/round_NN/copy_<a|b>, and their own run files
  stability.csv, stability.png       stability.py's results
"""

import json
import os
import socket
import threading
import time

import jax

from jaxtickets.store import checkpoint
from jaxtickets import config as config_lib, storage
from jaxtickets.errors import UserError

CONFIG = "config.json"
VGG_RECORD = "vgg.json"
LOCK = "run.lock"
INIT = "init"
TICKETS = "tickets"
STATE = "state"
SKIPS = "skipped_images.json"
RESULTS_CSV = "results.csv"
PAIRS_CSV = "pairs.csv"
SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
TENSORBOARD = "tensorboard"
REPORT = "report.md"
FIGURES = {"curves": "curves.png", "layers": "layers.png", "grid": "grid.png", "early_bird": "early_bird.png"}
STABILITY = "stability"
STABILITY_CSV = "stability.csv"
STABILITY_FIGURE = "stability.png"
# What a run has computed: a changed config must not silently reuse it.
_PROGRESS = (INIT, TICKETS, STATE)


# ----------------------------------------------------------------------------- where things are


def ticket_dir(workdir: str, branch: str, round_: int, replicate: int = 0) -> str:
  return os.path.join(workdir, TICKETS, branch, f"rep_{replicate}", f"round_{round_:02d}")


def ticket_dirs(workdir: str) -> list[tuple[str, int, int, str]]:
  """(branch, replicate, round, path) of every round folder under tickets/ (saved tickets or not), branches by
  name, replicates and rounds by number."""
  root = os.path.join(workdir, TICKETS)
  out = []
  for branch in sorted(storage.listdir(root)):
    for replicate, rep_path in _numbered(os.path.join(root, branch), "rep_"):
      out += [(branch, replicate, round_, path) for round_, path in _numbered(rep_path, "round_")]
  return out


def _numbered(path: str, prefix: str) -> list[tuple[int, str]]:
  """(number, path) of the entries 'prefix<number>' in `path`, by number."""
  out = []
  for name in storage.listdir(path):
    tail = name[len(prefix):]
    if name.startswith(prefix) and tail.isdigit():
      out.append((int(tail), os.path.join(path, name)))
  return sorted(out)


def run_of_ticket(path: str) -> str:
  """The workdir that holds the ticket at `path` (WORKDIR/tickets/<branch>/rep_<r>/round_NN)."""
  return os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(path))))


def init_dir(workdir: str, replicate: int) -> str:
  """Where replicate r keeps theta_0 and theta_k (the weights its rounds rewind to)."""
  return os.path.join(workdir, INIT, f"rep_{replicate}")


def theta_dir(workdir: str, replicate: int, step: int) -> str:
  """Replicate r's saved weights at `step` (theta_0, theta_k)."""
  return os.path.join(init_dir(workdir, replicate), f"theta_{step}")


def state_dir(workdir: str) -> str:
  return os.path.join(workdir, STATE)


def tensorboard_dir(workdir: str) -> str:
  return os.path.join(workdir, TENSORBOARD)


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG)


def vgg_record_path(workdir: str) -> str:
  return os.path.join(workdir, VGG_RECORD)


def stability_dir(workdir: str) -> str:
  """The workdir of stability.py's own training (its state and records of skipped images)."""
  return os.path.join(workdir, STABILITY)


def stability_copy_dir(workdir: str, replicate: int, round_: int, copy: str) -> str:
  return os.path.join(stability_dir(workdir), f"rep_{replicate}", f"round_{round_:02d}", f"copy_{copy}")


# ----------------------------------------------------------------------------- what is in them


def has_progress(workdir: str) -> bool:
  """Whether the workdir holds anything computed (theta_0, a ticket, a train-state checkpoint)."""
  nonempty = lambda d: bool(storage.listdir(d))
  return any(nonempty(os.path.join(workdir, d)) for d in _PROGRESS)


def load_skips(workdir: str) -> dict:
  """The workdir's record of unreadable images skipped (a data.SkipLog summary); {} when there is none."""
  path = os.path.join(workdir, SKIPS)
  try:
    return checkpoint.load_json(path) if storage.exists(path) else {}
  except UserError:
    return {}  # a damaged record only loses the names of earlier skips; they are found again


def save_skips(workdir: str, summary: dict) -> None:
  checkpoint.save_json(os.path.join(workdir, SKIPS), summary)


def load_run_settings(workdir: str, for_ticket: str | None = None):
  """A run's settings (settings.RunSettings) from its config.json, read on today's defaults (`for_ticket`: the
  ticket they are read for, named in the error when there is no run)."""
  path = config_path(workdir)
  if not storage.isfile(path):
    if for_ticket:
      raise UserError(f"The ticket '{for_ticket}' is not inside a run's workdir: '{path}' does not exist; pass a "
                      "ticket at WORKDIR/tickets/<branch>/rep_<r>/round_NN of a run made by jaxtickets.main.")
    raise UserError(f"No run at '{workdir}': '{path}' does not exist; pass the workdir of a run made by "
                    "jaxtickets.main.")
  data = checkpoint.load_json(path)
  if not isinstance(data, dict) or "model" not in data:
    raise UserError(f"'{path}' is not a jaxtickets config (no 'model' section); restore the run's {CONFIG}.")
  return config_lib.resolve(config_lib.from_saved(data))


def check_resume_config(record: dict, workdir: str, allow_config_change: bool, log=print) -> None:
  """Refuses to resume a run under a changed config (unless allowed); writes config.json. `record` is the config as
  config.json keeps it (settings.RunSettings.record)."""
  path = config_path(workdir)
  if storage.exists(path) and has_progress(workdir):
    changes = config_lib.config_changes(checkpoint.load_json(path), record)
    if changes and not allow_config_change:
      raise UserError(
          f"The workdir '{workdir}' holds a run with another config ({'; '.join(changes)}): run with the same "
          "config to resume it, pass --allow_config_change to resume it with this one, or set "
          "--config.resume=false to move it aside and start afresh.")
    if changes:
      log(f"WARNING: resuming '{workdir}' with a changed config (--allow_config_change): {'; '.join(changes)}.")
  if jax.process_index() == 0:
    checkpoint.save_json(path, record)


def load_vgg_record(workdir: str) -> dict:
  """A run's vgg.json, or {} for a run made before runs recorded their VGG."""
  path = vgg_record_path(workdir)
  return checkpoint.load_json(path) if storage.exists(path) else {}


def check_resume_vgg(vgg: dict, workdir: str, allow_change: bool, log=print) -> dict:
  """Refuses to resume a run whose VGG file changed (another SHA-256) unless allowed; writes vgg.json: `vgg`
  (weights.describe_vgg's record) and the directory the run is launched from, against which a relative
  config.model.vgg_weights is found again (weights.locate_run_vgg)."""
  rec = {**vgg, "launch_dir": os.getcwd()}
  old = load_vgg_record(workdir)
  if old and old.get("sha256") != rec["sha256"]:
    was = old.get("sha256") or "none (a random VGG)"
    if not allow_change:
      raise UserError(f"The run in '{workdir}' trained with a VGG of SHA-256 {was}, but "
                      f"config.model.vgg_weights = {rec['vgg_weights']!r} has {rec['sha256'] or 'none'}: point it at "
                      "the file the run trained with, or pass --allow_config_change to go on with this one.")
    log(f"WARNING: resuming '{workdir}' with another VGG (SHA-256 {was} -> {rec['sha256'] or 'none'}).")
  if jax.process_index() == 0:
    checkpoint.save_json(vgg_record_path(workdir), rec)
  return rec


# ----------------------------------------------------------------------------- the lock


def lock_workdir(workdir: str, resume: bool, log=print) -> "WorkdirLock | None":
  """Locks the workdir (process 0 only); without `resume` (config.resume = False), first moves a previous run
  aside."""
  if jax.process_index() != 0:
    storage.makedirs(workdir)
    return None
  lock = WorkdirLock(workdir, log).acquire()
  if resume or not (set(storage.listdir(workdir)) - {LOCK}):
    return lock
  aside = f"{workdir.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  lock.release()
  storage.rename(workdir, aside)
  log(f"config.resume is False: moved the previous run in '{workdir}' aside to '{aside}'; starting afresh.")
  return WorkdirLock(workdir, log).acquire()


def open_run(workdir: str, *, resume: bool, record: dict, vgg: dict, allow_change: bool, log=print
             ) -> "WorkdirLock | None":
  """The workdir of a run that is starting or resuming: locked (lock_workdir), its config and VGG held to what it
  trained with and recorded (check_resume_config, check_resume_vgg); the lock is released again when a check
  refuses."""
  lock = lock_workdir(workdir, resume, log)
  try:
    check_resume_config(record, workdir, allow_change, log)
    check_resume_vgg(vgg, workdir, allow_change, log)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return lock


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


class WorkdirLock:
  """`<workdir>/run.lock` holding the owner's PID and host and a heartbeat: one run per workdir at a time.

  Created exclusively (storage.create_exclusive: a hard link on disk, ifGenerationMatch=0 on GCS), so of two
  runs starting together exactly one gets it. The holder rewrites its heartbeat every BEAT_SECONDS from a
  background thread. A lock is stale, and taken over with a warning, when its PID is dead on this host (a
  killed run), or when its heartbeat is older than STALE_SECONDS (a host that is gone: a preempted TPU slice
  comes back on new VMs with other host names). Otherwise it is refused with a sentence saying how to clear it.
  """

  BEAT_SECONDS = 30.0
  STALE_SECONDS = 120.0

  def __init__(self, workdir, log=print):
    self.path = os.path.join(os.fspath(workdir), LOCK)
    self.log = log
    self.held = False
    self._stop = threading.Event()
    self._beat_thread = None

  def _record(self) -> str:
    return json.dumps({'pid': os.getpid(), 'host': socket.gethostname(), 'started': self._started,
                       'beat': time.time()})

  def _owner(self) -> dict | None:
    try:
      owner = json.loads(storage.read_text(self.path))
      return owner if isinstance(owner, dict) and isinstance(owner.get('pid'), int) else None
    except FileNotFoundError:
      return {}
    except (OSError, ValueError):
      return None

  def _stale_reason(self, owner: dict) -> str | None:
    """Why the lock of `owner` can be taken over, or None while its run may be alive."""
    host = socket.gethostname()
    if owner['host'] == host:
      return None if _pid_alive(owner['pid']) else 'which is no longer running (a killed or crashed run)'
    beat = owner.get('beat')
    age = time.time() - beat if isinstance(beat, (int, float)) else None
    if age is not None and age > self.STALE_SECONDS:
      return f'whose heartbeat stopped {age:.0f} s ago (a host that is gone, e.g. a preempted slice)'
    return None

  def acquire(self) -> 'WorkdirLock':
    storage.makedirs(os.path.dirname(self.path))
    self._started = time.strftime('%Y-%m-%d %H:%M:%S')
    for _ in range(3):  # a lost race with a stale-lock takeover by another run: look again
      if storage.create_exclusive(self.path, self._record()):
        self.held = True
        self._start_heartbeat()
        return self
      owner = self._owner()
      if owner == {}:
        continue  # removed in the meantime
      if owner is None:
        self.log(f"WARNING: the lock file '{self.path}' is unreadable (a run died while writing it); taking it over.")
      elif (reason := self._stale_reason(owner)) is not None:
        self.log(f"WARNING: taking over the stale lock '{self.path}' of PID {owner['pid']} on {owner['host']}, "
                 f'{reason}.')
      elif owner['host'] == socket.gethostname():
        raise UserError(f"Another run (PID {owner['pid']} on {owner['host']}, started {owner.get('started', '?')}) "
                        f"is using the workdir '{os.path.dirname(self.path)}': wait for it to finish, stop it, or "
                        'pass another --workdir.')
      elif isinstance(owner.get('beat'), (int, float)):
        raise UserError(f"Another run (PID {owner['pid']} on host {owner['host']}) holds the lock "
                        f"'{self.path}' and beat {time.time() - owner['beat']:.0f} s ago: wait for it to finish, or "
                        f"if it is gone, run again {self.STALE_SECONDS:.0f} s after its last beat (or pass another "
                        '--workdir).')
      else:
        raise UserError(f"Another run (PID {owner['pid']} on host {owner['host']}) holds the lock "
                        f"'{self.path}': wait for it to finish or pass another --workdir, and delete the lock file "
                        'only if you are sure that run is gone.')
      storage.remove(self.path)
    raise UserError(f"Could not take the lock '{self.path}' (other runs keep taking it): pass another --workdir.")

  def _start_heartbeat(self) -> None:
    self._stop.clear()
    def beat():
      while not self._stop.wait(self.BEAT_SECONDS):
        try:
          storage.write_atomically(self.path, self._record())
        except OSError as e:  # a missed beat is retried; only a long outage makes the lock look stale
          self.log(f"WARNING: could not refresh the lock '{self.path}' ({e}).")
    self._beat_thread = threading.Thread(target=beat, name='jaxtickets-lock-heartbeat', daemon=True)
    self._beat_thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._beat_thread is not None:
      self._beat_thread.join()
      self._beat_thread = None
    owner = self._owner() if self.held else None
    if owner and owner.get('pid') == os.getpid() and owner.get('host') == socket.gethostname():
      storage.remove(self.path)
    self.held = False
