"""Storage on disk and on GCS: a real GCS server on 127.0.0.1 (gcp-storage-emulator, see tests/gcs_server.py) that
gcsfs and TensorStore (Orbax's arrays) both talk to, started and stopped here.

The end-to-end test runs the command line with a gs:// workdir and gs:// data folders, kills it with SIGKILL inside
round 1, runs the same command again and compares every ticket, mask for mask, with the uninterrupted local run.
"""

import csv
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets import data, storage
from jaxtickets.data import sources
from jaxtickets.errors import UserError
from helpers import CLI_ARGS, ROOT, assert_same_ticket, cli_env, tiny_config

HERE = os.path.dirname(os.path.abspath(__file__))
BUCKET = "jaxtickets-test"
TIMEOUT = 900


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
  """The server's environment for gcsfs (STORAGE_EMULATOR_HOST) and TensorStore (TENSORSTORE_GCS_HTTP_URL), set
  in this process and passed to the children; the server is stopped at the end."""
  pytest.importorskip("gcsfs", reason="the [gcs] extra")  # installed by the README's test install
  port = _free_port()
  server = subprocess.Popen([sys.executable, os.path.join(HERE, "gcs_server.py"), str(port), BUCKET],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    assert server.stdout.readline().strip() == "ready"
    url = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "loopback", "GOOGLE_CLOUD_PROJECT": "test"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
  finally:
    server.terminate()
    server.wait(timeout=30)
    for k, v in locals().get("before", {}).items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# ----------------------------------------------------------------------------- the storage layer, on both kinds


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  if request.param == "local":
    return str(tmp_path)
  request.getfixturevalue("gcs")
  return f"gs://{BUCKET}/{request.node.name.replace('[', '_').replace(']', '')}-{time.time_ns()}"


def test_atomic_write_read_list_walk_rename(root):
  storage.write_atomically(os.path.join(root, "a", "x.txt"), "one")
  storage.write_atomically(os.path.join(root, "a", "x.txt"), "two")  # replaces
  storage.write_atomically(os.path.join(root, "a", "b", "y.png"), b"\x89PNG")
  assert storage.read_text(os.path.join(root, "a", "x.txt")) == "two"
  assert sorted(storage.listdir(os.path.join(root, "a"))) == ["b", "x.txt"]  # no temporary left beside it
  assert storage.walk_files(root) == [os.path.join(root, "a", "b", "y.png"), os.path.join(root, "a", "x.txt")]
  assert storage.isdir(os.path.join(root, "a")) and storage.isfile(os.path.join(root, "a", "x.txt"))
  assert storage.listdir(os.path.join(root, "none")) == [] and not storage.exists(os.path.join(root, "none"))
  storage.rename(os.path.join(root, "a"), os.path.join(root, "moved"))
  assert not storage.exists(os.path.join(root, "a"))
  assert storage.read_bytes(os.path.join(root, "moved", "b", "y.png")) == b"\x89PNG"


def test_a_writer_that_fails_leaves_the_old_file_whole(root):
  """A file made by a library (a writer given the temporary path) replaces the old one whole, or not at all."""
  from jaxtickets.weights import files as weights
  path = os.path.join(root, "sub", "w.npz")
  storage.write_atomically(path, lambda tmp: weights.write_npz(tmp, {"a": np.arange(3)}))

  def half_written(tmp):
    with open(tmp, "wb") as f:
      f.write(b"PK")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    storage.write_atomically(path, half_written)
  with np.load(io.BytesIO(storage.read_bytes(path))) as z:  # the old file, whole
    np.testing.assert_array_equal(z["a"], np.arange(3))
  assert storage.listdir(os.path.join(root, "sub")) == ["w.npz"]  # no temporary left


def test_exclusive_create_has_one_winner(root):
  """Eight writers race for one name: exactly one creates it, and the file is that writer's, whole."""
  path = os.path.join(root, "run.lock")
  won, start = [], threading.Barrier(8)

  def race(i):
    start.wait()
    if storage.create_exclusive(path, f"writer {i}"):
      won.append(i)

  threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert len(won) == 1 and storage.read_text(path) == f"writer {won[0]}"


def test_workdir_lock_on_both(root):
  logs = []
  lock = workdir_lib.WorkdirLock(root, log=logs.append).acquire()
  with pytest.raises(UserError, match="is using the workdir"):
    workdir_lib.WorkdirLock(root, log=logs.append).acquire()
  lock.release()
  assert not storage.exists(os.path.join(root, "run.lock"))
  # A lock left by a host that is gone (its heartbeat stopped long ago) is taken over.
  checkpoint.save_json(os.path.join(root, "run.lock"), {"pid": 1, "host": "gone", "beat": time.time() - 1e4})
  workdir_lib.WorkdirLock(root, log=logs.append).acquire().release()
  assert "heartbeat stopped" in logs[-1]


def test_a_missing_filesystem_package_is_one_sentence(monkeypatch):
  monkeypatch.setitem(storage._FILESYSTEM_PACKAGES, "gs", ("no_such_gcs_package", "gcs"))
  with pytest.raises(UserError, match=r"'gs://b/run' is on gs://, which needs no_such_gcs_package: pip install "
                                      r"'jaxtickets\[gcs\]'"):
    storage.check_reachable("gs://b/run", "--workdir")


def test_a_folder_that_a_file_blocks_is_one_sentence(tmp_path):
  (tmp_path / "taken").write_text("a file")
  for path in (tmp_path / "taken", tmp_path / "taken" / "run" / "tickets"):
    with pytest.raises(UserError, match=rf"^The folder '{re.escape(str(path))}' cannot be made: "
                                        rf"'{re.escape(str(tmp_path / 'taken'))}' is a file; choose another path"):
      storage.makedirs(path)
  storage.makedirs(tmp_path / "free" / "run")  # parents are made; an existing folder is fine
  storage.makedirs(tmp_path / "free" / "run")
  assert (tmp_path / "free" / "run").is_dir()


def test_listing_difference_names_the_first_differing_file():
  digests = lambda names: sources._listing_digests([f"/d/{n}" for n in names], "/d")
  same, other, short = digests(["a.png", "b.png"]), digests(["a.png", "c.png"]), digests(["a.png"])
  rows = lambda *ds: np.stack([np.pad(d, (0, 2 - len(d))) for d in ds])
  assert data.first_listing_difference(rows(same, same), np.array([2, 2])) is None
  assert data.first_listing_difference(rows(same, other), np.array([2, 2])) == (1, 1)
  assert data.first_listing_difference(rows(same, same, short), np.array([2, 2, 1])) == (2, 1)
  # Relative names: the same tree under two roots (each host's own copy) agrees.
  np.testing.assert_array_equal(sources._listing_digests(["/x/a/b.png"], "/x"),
                                sources._listing_digests(["gs://k/a/b.png"], "gs://k/"))


# ----------------------------------------------------------------------------- the command line on gs://


def _upload_demo_images(prefix: str) -> dict:
  """The demo's images as gs:// folders, named so that their sorted order is the demo's order."""
  args = {}
  for kind in data.DEMO_IMAGES:
    for i, path in enumerate(data.demo_images(kind)):
      storage.write_atomically(f"{prefix}/{kind}/{i:02d}_{os.path.basename(path)}", storage.read_bytes(path))
    args[kind] = f"--config.data.{kind}={prefix}/{kind}"
  return args


def _command(workdir, data_args):
  # One replicate and IMP alone: replicate 0's IMP tickets are the reference's (replicate r depends on seed + r, and
  # IMP's rounds on nothing the baselines do).
  return [sys.executable, "-m", "jaxtickets.main", *CLI_ARGS, *data_args.values(), "--config.imp.replicates=1",
          "--config.imp.branches=imp", f"--workdir={workdir}"]


def _results(workdir) -> list[dict]:
  rows = csv.DictReader(io.StringIO(storage.read_text(os.path.join(workdir, "results.csv"))))
  return sorted(({k: r[k] for k in ("branch", "round", "sparsity_prunable", "remaining_prunable")}
                 for r in rows if r["replicate"] == "0" and r["branch"] == "imp"), key=lambda r: r["round"])


@pytest.mark.e2e
def test_gs_workdir_and_data_killed_and_resumed_give_the_local_tickets(gcs, cli_reference):
  prefix = f"gs://{BUCKET}/e2e-{time.time_ns()}"
  data_args = _upload_demo_images(f"{prefix}/data")
  workdir = f"{prefix}/run"
  env = dict(cli_env(), **gcs)
  child = subprocess.Popen(_command(workdir, data_args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  out = []
  for line in child.stdout:  # kill -9 inside round 1, once a train-state checkpoint of it is on gs://
    out.append(line)
    if "[rep 0 imp round 1] step 5/6" in line:
      child.send_signal(signal.SIGKILL)
      break
  child.wait(timeout=TIMEOUT)
  assert child.returncode == -signal.SIGKILL, "".join(out[-12:])
  assert not checkpoint.ticket_exists(workdir_lib.ticket_dir(workdir, "imp", 1, 0)), "killed too late"
  assert storage.exists(os.path.join(workdir, "run.lock"))  # a killed run cannot clean up

  again = subprocess.run(_command(workdir, data_args), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=TIMEOUT)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "taking over the stale lock" in again.stdout
  assert "[rep 0 imp round 0] already done" in again.stdout
  assert re.search(r"\[rep 0 imp round 1\] resuming at step [24] from its checkpoint", again.stdout), again.stdout
  differing = 0
  for branch, round_ in (("imp", 0), ("imp", 1)):
    ref = checkpoint.load_ticket(workdir_lib.ticket_dir(cli_reference, branch, round_, 0))
    got = checkpoint.load_ticket(workdir_lib.ticket_dir(workdir, branch, round_, 0))
    differing += sum(int(np.sum(a != b)) for a, b in zip(jax.tree.leaves(ref.masks), jax.tree.leaves(got.masks)))
    assert_same_ticket(ref, got, atol=1e-5, what=f"{branch} round {round_}")
  assert differing == 0
  assert _results(workdir) == _results(cli_reference)
  for name in (workdir_lib.REPORT, workdir_lib.SUMMARY_CSV, "curves.png", "grid.png"):
    assert storage.isfile(os.path.join(workdir, name)), name
  assert not storage.exists(os.path.join(workdir, "run.lock"))  # released at the end


def test_a_gs_vgg_is_read_through_a_local_copy(gcs, tmp_path, monkeypatch):
  """A ported VGG folder on gs:// loads as the same arrays, and hashes as the same file, as its local original."""
  from jaxtickets.weights import files as weights
  from jaxtickets.models import get_model
  monkeypatch.setenv("JAXTICKETS_CACHE", str(tmp_path / "cache"))
  model = get_model("adain")(tiny_config().model)
  expected = jax.eval_shape(lambda: model.init_vgg(jax.random.PRNGKey(0)))
  local = weights.resolve_demo_vgg(0.0625)
  url = f"gs://{BUCKET}/vgg-{time.time_ns()}/{os.path.basename(local)}"
  storage.write_atomically(url, storage.read_bytes(local))
  got, want = weights.load_vgg_weights(url, expected), weights.load_vgg_weights(local, expected)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert weights.vgg_sha256(url) == weights.file_sha256(local)
  with pytest.raises(UserError, match="does not exist"):
    weights.load_vgg_weights(url + ".missing", expected)


@pytest.mark.e2e
@pytest.mark.parametrize("differ", [False, True])
def test_two_processes_compare_their_data_listings(tmp_path, differ):
  """Each process has its own copy of the data (its own folder); a file missing from one copy stops both, naming it."""
  from PIL import Image
  folders = []
  for p in range(2):
    folder = tmp_path / f"host{p}"
    names = ["a.png", "b.png", "c.png"] if p == 0 or not differ else ["a.png", "c.png"]
    for name in names:
      (folder / "sub").mkdir(parents=True, exist_ok=True)
      Image.new("RGB", (4, 4)).save(folder / "sub" / name)
    folders.append(str(folder))
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "_listing_worker.py"), port, str(p), folders[p]],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
           for p in range(2)]
  outs = [proc.communicate(timeout=300)[0].strip().splitlines()[-1] for proc in procs]
  if not differ:
    assert outs == ["agree", "agree"]
    return
  assert all(o.startswith("error: The hosts see different files in config.data.content") for o in outs), outs
  assert "process 0 and process 1 differ from file 1 of the sorted listing" in outs[1]
  assert f"'{folders[1]}/sub/c.png'" in outs[1] and f"'{folders[0]}/sub/b.png'" in outs[0]


# Copying a ticket object by object through the emulator takes seconds: the gs:// case is in the e2e tier.
@pytest.mark.parametrize("root", ["local", pytest.param("gs", marks=pytest.mark.e2e)], indirect=True)
def test_a_study_shares_imp_tickets_and_rewind_points_on_both(root):
  """A study's sub-run that differs from an earlier one only in the baselines gets its IMP tickets and theta_0: hard
  links on disk, object copies on GCS, where a copy cut short is completed by the next run."""
  from jaxtickets import study  # pylint: disable=import-outside-toplevel

  params = {"decoder": {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}}
  masks = {"decoder": {"conv": {"kernel": np.array([[True, False, True], [True, True, False]])}}}
  source, target = os.path.join(root, "a"), os.path.join(root, "b")
  ticket = workdir_lib.ticket_dir(source, "imp", 1, 0)
  checkpoint.save_ticket(ticket, masks=masks, rewind_params=params, trained_params=params,
                         metrics={"total": 1.5}, sparsity={"prunable": {"sparsity": 0.2}})
  checkpoint.save_params(workdir_lib.theta_dir(source, 0, 0), params)
  run = lambda workdir: study.SubRun("adain", os.path.basename(workdir), tiny_config(), workdir)
  study.share_imp(run(source), run(target))
  shared = workdir_lib.ticket_dir(target, "imp", 1, 0)
  assert checkpoint.ticket_exists(shared) and checkpoint.params_exist(workdir_lib.theta_dir(target, 0, 0))
  got = checkpoint.load_ticket(shared)
  np.testing.assert_array_equal(got.masks["decoder"]["conv"]["kernel"], masks["decoder"]["conv"]["kernel"])
  assert got.metrics["total"] == 1.5
  if storage.is_url(root):  # an interrupted copy: the marker and an array file missing, the ticket unfinished
    files = storage.walk_files(shared)
    for path in (files[0], next(p for p in files if p.endswith("commit_success.txt"))):
      storage.remove(path)
    assert not checkpoint.ticket_exists(shared)
  else:  # an interrupted share leaves only its partial sibling, which the next one replaces
    storage.rename(os.path.join(target, workdir_lib.TICKETS, "imp"),
                   os.path.join(target, workdir_lib.TICKETS, "imp.sharing"))
  study.share_imp(run(source), run(target))
  assert checkpoint.ticket_exists(shared)
  assert not storage.exists(os.path.join(target, workdir_lib.TICKETS, "imp.sharing"))
  np.testing.assert_array_equal(checkpoint.load_ticket(shared).trained_params["decoder"]["conv"]["kernel"],
                                params["decoder"]["conv"]["kernel"])
