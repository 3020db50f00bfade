"""Long runs: SIGKILL and SIGTERM then the same command, damaged checkpoints, bad images, NaNs, config changes.

The command-line runs share one tiny configuration (helpers.CLI_ARGS: AdaIN at 1/16 width, 32 px, 6 steps per
round, 1 pruned round, IMP and random pruning, 2 replicates, a checkpoint every 2 steps) and one uninterrupted
reference run (conftest.cli_reference, shared with test_main.py's pods) to compare their tickets with.

kill -9 of a packed run is tested here (one process, resumed packed) and on two processes in test_main.py (resumed
unpacked); a pack's preemption and resume in process in test_pack.py and test_early_bird.py, and that packed runs
give the unpacked runs' tickets in test_imp.py.
"""

import csv
import dataclasses
import glob
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest
from PIL import Image

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.data import pipeline
from jaxtickets.run import imp, preempt, train
from jaxtickets.errors import UserError
from helpers import CLI_ARGS, ROOT, StopAfter, assert_same_ticket, cli_env, state_checkpoints, tiny_config

ROUNDS = (0, 1)
REPLICATES = (0, 1)
TIMEOUT = 900  # generous: the test machine is shared


def command(workdir, *extra):
  return [sys.executable, "-m", "jaxtickets.main", *CLI_ARGS, f"--workdir={workdir}", *extra]


def run_to_end(workdir, *extra):
  return subprocess.run(command(workdir, *extra), cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                        timeout=TIMEOUT)


class Child:
  """A background run whose stdout lines are collected as they come."""

  def __init__(self, workdir, *extra):
    self.proc = subprocess.Popen(command(workdir, *extra), cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    self.lines, self.err = queue.Queue(), []
    self.out = []
    threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True).start()
    threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True).start()

  def _read(self, stream, sink):
    for line in stream:
      sink.append(line)

  def wait_for(self, predicate, what):
    """Polls until predicate() holds; fails if the run ends first."""
    deadline = time.time() + TIMEOUT
    while not predicate():
      assert self.proc.poll() is None, f"the run ended before {what}:\n{''.join(self.out)}{''.join(self.err)}"
      if time.time() > deadline:  # a hang guard, not a speed check
        pytest.fail(f"timed out waiting for {what}")
      time.sleep(0.02)

  def finish(self):
    self.proc.wait(timeout=TIMEOUT)
    time.sleep(0.2)  # let the reader threads drain the pipes
    return self.proc.returncode, "".join(self.out), "".join(self.err)


def assert_same_tickets(a, b):
  """Every ticket's masks and rewind point identical, trained weights equal up to float rounding."""
  for branch, rep, r in [("imp", rep, r) for rep in REPLICATES for r in ROUNDS] + [("random_prune", rep, 1)
                                                                                  for rep in REPLICATES]:
    ta = checkpoint.load_ticket(workdir_lib.ticket_dir(a, branch, r, rep))
    tb = checkpoint.load_ticket(workdir_lib.ticket_dir(b, branch, r, rep))
    for x, y in zip(jax.tree.leaves(ta.masks), jax.tree.leaves(tb.masks)):
      np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(ta.rewind_params), jax.tree.leaves(tb.rewind_params)):
      np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(ta.trained_params), jax.tree.leaves(tb.trained_params)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    assert ta.metrics["total"] == pytest.approx(tb.metrics["total"], rel=1e-5)

  def table(workdir):
    with open(os.path.join(workdir, "results.csv")) as f:
      return [{k: row[k] for k in ("branch", "replicate", "round", "sparsity_prunable", "sparsity_total",
                                   "remaining_prunable")} for row in csv.DictReader(f)]

  assert table(a) == table(b) and len(table(a)) == (len(ROUNDS) + 1) * len(REPLICATES)


@pytest.fixture(scope="module")
def sigtermed(tmp_path_factory):
  """A run sent SIGTERM during round 1, and what it left."""
  workdir = str(tmp_path_factory.mktemp("sigterm"))
  child = Child(workdir)
  child.wait_for(lambda: any("[rep 0 imp round 1] step 3/6" in line for line in child.out), "round 1's step 3")
  child.proc.send_signal(signal.SIGTERM)
  rc, out, err = child.finish()
  return dict(workdir=workdir, rc=rc, out=out, err=err, checkpoints=state_checkpoints(workdir),
              lock=os.path.exists(os.path.join(workdir, "run.lock")))


@pytest.mark.e2e
def test_sigterm_saves_a_fresh_checkpoint_and_exits_cleanly(sigtermed):
  out = sigtermed["out"]
  m = re.search(r"Stopped by SIGTERM at step (\d) of \[rep 0 imp round (\d)\]; the checkpoint is step (\d) in '(.*)'\. "
                r"To resume, run the same command again: python\S* -m jaxtickets\.main --config=configs/adain\.py:demo",
                out)
  assert m, out + sigtermed["err"]
  step, round_ = int(m.group(1)), int(m.group(2))
  assert sigtermed["rc"] == 75  # EX_TEMPFAIL: a scheduler should run it again
  assert "Traceback" not in sigtermed["err"]
  assert int(m.group(3)) == step and os.path.samefile(m.group(4), os.path.join(sigtermed["workdir"], "state"))
  assert max(sigtermed["checkpoints"]) == step  # saved at the step it stopped, not only at the interval
  assert sigtermed["checkpoints"][step]["runs"][0]["round"] == round_ == 1
  assert f"[rep 0 imp round 1] step {step + 1}/6" not in out
  assert not sigtermed["lock"]


@pytest.mark.e2e
def test_ctrl_c_finishes_the_step_saves_and_exits_130_without_a_traceback(tmp_path):
  workdir = str(tmp_path / "run")
  child = Child(workdir)
  child.wait_for(lambda: any("[rep 0 imp round 0] step 2/6" in line for line in child.out), "round 0's step 2")
  child.proc.send_signal(signal.SIGINT)
  rc, out, err = child.finish()
  assert rc == 130, out + err
  m = re.search(r"Stopped by Ctrl-C \(SIGINT\) at step (\d) of \[rep 0 imp round 0\]; the checkpoint is step \d+ "
                r"in '.*'\. To resume, run the same command again: python\S* -m jaxtickets\.main", out)
  assert m, out + err
  assert int(m.group(1)) in state_checkpoints(workdir)
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  # The backend probing (no TPU or GPU here) stays quiet; warnings would still show.
  assert "Unable to initialize backend" not in err


@pytest.fixture(scope="module")
def damaged_then_killed(sigtermed):
  """The SIGTERMed run continued: its latest checkpoint damaged, the same command again (which falls back to the
  checkpoint before), that run killed with SIGKILL inside replicate 1's round 1, and what it left."""
  workdir = sigtermed["workdir"]
  latest = max(sigtermed["checkpoints"])
  files = glob.glob(os.path.join(workdir, "state", str(latest), "state", "**", "d", "*"), recursive=True)
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(3)
  child = Child(workdir)
  saved = lambda: any(run["replicate"] == 1 and run["round"] == 1 and run["step"] < 6
                      for m in state_checkpoints(workdir).values() for run in m["runs"])
  child.wait_for(saved, "a checkpoint of replicate 1's round 1")
  child.proc.send_signal(signal.SIGKILL)
  _, out, err = child.finish()
  done = {(branch, r, rep): checkpoint.ticket_exists(workdir_lib.ticket_dir(workdir, branch, r, rep))
          for branch, r, rep in [("imp", 1, 0), ("imp", 0, 1), ("imp", 1, 1)]}
  return dict(workdir=workdir, latest=latest, out=out, err=err, done=done,
              lock=os.path.exists(os.path.join(workdir, "run.lock")))


@pytest.mark.e2e
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(damaged_then_killed):
  """(The run's tickets are compared with the reference at the end of the chain, after the SIGKILL's resume.)"""
  workdir, latest, out = damaged_then_killed["workdir"], damaged_then_killed["latest"], damaged_then_killed["out"]
  assert f"the checkpoint '{os.path.join(workdir, 'state', str(latest))}' is damaged" in out, out
  m = re.search(r"\[rep 0 imp round 1\] resuming at step (\d) from its checkpoint", out)
  assert m and int(m.group(1)) < latest, out
  assert "[rep 0 imp round 0] already done" in out


@pytest.fixture(scope="module")
def resumed_to_end(damaged_then_killed):
  """After the SIGKILL, the same command with a config field changed: refused; then again with
  --allow_config_change, which resumes the run and finishes it."""
  workdir = damaged_then_killed["workdir"]
  # early_bird_patience does nothing while early-bird is off, so the tickets stay the reference's, but it is a
  # change all the same; checkpoint.every_steps is resume-safe and not listed.
  changed = ["--config.imp.early_bird_patience=5", "--config.checkpoint.every_steps=3"]
  refused = run_to_end(workdir, *changed)
  allowed = run_to_end(workdir, *changed, "--allow_config_change")
  return dict(workdir=workdir, refused=refused, allowed=allowed)


@pytest.mark.e2e
def test_sigkill_inside_replicate_1_then_the_same_command_gives_the_same_tickets(damaged_then_killed, resumed_to_end,
                                                                                 cli_reference):
  workdir, done = damaged_then_killed["workdir"], damaged_then_killed["done"]
  assert done[("imp", 1, 0)] and done[("imp", 0, 1)]
  assert not done[("imp", 1, 1)], "killed too late: the round had finished"
  assert damaged_then_killed["lock"]  # a killed run cannot clean up
  assert "taking over the stale lock" in resumed_to_end["refused"].stdout  # the first command after the kill

  r = resumed_to_end["allowed"]
  assert r.returncode == 0, r.stdout + r.stderr
  for done in ("[rep 0 imp round 0]", "[rep 0 imp round 1]", "[rep 0 random_prune round 1]", "[rep 1 imp round 0]"):
    assert f"{done} already done" in r.stdout and f"{done} step" not in r.stdout  # nothing redone
  assert re.search(r"\[rep 1 imp round 1\] resuming at step [24] from its checkpoint", r.stdout), r.stdout
  assert "[rep 1 imp round 1] step 1/6" not in r.stdout
  assert not os.path.exists(os.path.join(workdir, "run.lock"))
  # SIGTERM, a damaged checkpoint, SIGKILL and an allowed config change on the way: the uninterrupted run's tickets.
  assert_same_tickets(cli_reference, workdir)


@pytest.mark.e2e
def test_changed_config_is_refused_on_the_command_line_unless_allowed(resumed_to_end):
  workdir, refused, allowed = resumed_to_end["workdir"], resumed_to_end["refused"], resumed_to_end["allowed"]
  assert refused.returncode != 0 and "Traceback" not in refused.stderr
  assert (f"error: The workdir '{workdir}' holds a run with another config (imp.early_bird_patience: 3 -> 5): run "
          "with the same config to resume it, pass --allow_config_change") in refused.stderr
  assert "resuming" in allowed.stdout and "with a changed config" in allowed.stdout
  assert "imp.early_bird_patience: 3 -> 5" in allowed.stdout and "every_steps" not in allowed.stdout
  saved = checkpoint.load_json(os.path.join(workdir, "config.json"))
  assert saved["imp"]["early_bird_patience"] == 5 and saved["checkpoint"]["every_steps"] == 3


@pytest.mark.e2e
def test_packed_run_killed_in_round_1_and_resumed_packed_gives_the_uninterrupted_tickets(cli_reference, tmp_path):
  """Both replicates packed in one step (vmapped on this one device), kill -9 inside their packed round 1, the same
  command again: both runs resume from their slots of the pack's checkpoint, nothing finished is trained again, and
  every ticket is the uninterrupted (unpacked) run's, up to the rounding a vmapped step differs by."""
  workdir, packed = str(tmp_path / "run"), "--config.parallel.runs_per_step=2"
  child = Child(workdir, packed)
  in_round_1 = lambda: any([(run["round"], run["replicate"]) for run in meta["runs"]] == [(1, 0), (1, 1)]
                           and meta["runs"][0]["step"] < 6 for meta in state_checkpoints(workdir).values())
  child.wait_for(in_round_1, "a checkpoint of the packed round 1")
  child.proc.send_signal(signal.SIGKILL)
  _, out, _ = child.finish()
  assert "[rep 1 imp round 1] step 1/6" in out and "[2 runs side by side]" in out
  assert not any(checkpoint.ticket_exists(workdir_lib.ticket_dir(workdir, "imp", 1, rep)) for rep in REPLICATES), \
      "killed too late: the round had finished"

  r = run_to_end(workdir, packed)
  assert r.returncode == 0, r.stdout + r.stderr
  assert "changed config" not in r.stdout and "[2 runs side by side]" in r.stdout
  for rep in REPLICATES:
    assert f"[rep {rep} imp round 0] already done" in r.stdout and f"[rep {rep} imp round 0] step" not in r.stdout
    assert re.search(rf"\[rep {rep} imp round 1\] resuming at step [24] from its checkpoint", r.stdout), r.stdout
    assert f"[rep {rep} imp round 1] step 1/6" not in r.stdout
  _assert_same_tickets_packed(cli_reference, workdir)


def _assert_same_tickets_packed(reference, workdir):
  """Every ticket's masks and rewind point identical, trained weights equal up to a vmapped step's rounding (up to
  3e-6 here, while the weights move ~1e-3 and a step of another batch or optimizer state moves them ~1e-3 too), the
  tables' sparsities identical."""
  for branch, rep, r in [("imp", rep, r) for rep in REPLICATES for r in ROUNDS] + [("random_prune", rep, 1)
                                                                                  for rep in REPLICATES]:
    ta = checkpoint.load_ticket(workdir_lib.ticket_dir(reference, branch, r, rep))
    tb = checkpoint.load_ticket(workdir_lib.ticket_dir(workdir, branch, r, rep))
    assert_same_ticket(ta, tb, atol=1e-5, what=f"{branch} {r} {rep}")
    assert tb.metrics["total"] == pytest.approx(ta.metrics["total"], rel=1e-5)

  def table(d):  # sorted: packed and unpacked runs finish in different orders
    with open(os.path.join(d, "results.csv")) as f:
      return sorted(({k: row[k] for k in ("branch", "replicate", "round", "sparsity_prunable", "sparsity_total",
                                          "remaining_prunable")} for row in csv.DictReader(f)),
                    key=lambda row: (row["branch"], row["round"], row["replicate"]))

  assert table(workdir) == table(reference) and len(table(workdir)) == (len(ROUNDS) + 1) * len(REPLICATES)


# ----------------------------------------------------------------------------- in-process


def test_config_checks_before_anything_runs(tmp_path):
  workdir = str(tmp_path / "w")
  os.makedirs(os.path.join(workdir, "init", "rep_0", "theta_0"))
  open(os.path.join(workdir, "init", "rep_0", "theta_0", "x"), "w").close()  # progress worth protecting
  checkpoint.save_json(os.path.join(workdir, "config.json"), json.loads(tiny_config().to_json()))
  with pytest.raises(UserError, match=r"holds a run with another config \(imp.rounds: 3 -> 5; train.lr: 0.001 -> "
                                      r"0.002\): .*--config.resume=false to move it aside"):
    imp.run(config_lib.resolve(tiny_config(train__lr=2e-3, imp__rounds=5)), workdir)
  assert not os.path.exists(os.path.join(workdir, "run.lock"))  # released on the way out
  logs = []
  workdir_lib.check_resume_config(config_lib.resolve(tiny_config(train__lr=2e-3)).record, workdir, allow_config_change=True, log=logs.append)
  assert "changed config (--allow_config_change): train.lr: 0.001 -> 0.002" in logs[-1]
  # resume=False moves the previous run aside and starts in an empty workdir.
  workdir_lib.lock_workdir(workdir, resume=False, log=logs.append).release()
  aside = glob.glob(workdir + ".old-*")
  assert len(aside) == 1 and os.path.isdir(os.path.join(aside[0], "init", "rep_0", "theta_0"))
  assert os.listdir(workdir) == [] and "moved the previous run" in logs[-1]


def test_a_vgg_problem_stops_a_fresh_start_before_the_previous_run_is_moved_aside(tmp_path, monkeypatch):
  from jaxtickets.weights import files as weights  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / "w")
  os.makedirs(os.path.join(workdir, "init"))  # a previous run that config.resume=false would move aside
  run_settings = config_lib.resolve(tiny_config(resume=False))
  # The demo loss network no longer matches its recorded hash (changed or damaged after the config was resolved).
  monkeypatch.setitem(weights.DEMO_VGG_SHA256, run_settings.model.width, "0" * 64)
  with pytest.raises(UserError, match=r"demo loss network .* has SHA-256 .* not the 000000000000"):
    imp.run(run_settings, workdir)
  assert os.listdir(workdir) == ["init"] and not glob.glob(workdir + ".old-*")


# A rewind point k > 0 and the baseline branches, resumed in-process: a stand-in for SIGTERM stops a chosen round
# after a chosen step (the watch the train loop asks), which saves and raises Preempted as a real signal does. Every
# run shares one run context, as the same command again would build it: its steps are traced once, not once a run.
BRANCHES = ("imp", "random_prune", "random_reinit")


def _with_output(ctx, **fields):
  return dataclasses.replace(ctx, output=dataclasses.replace(ctx.output, **fields))


def _run(ctx, workdir):
  """What imp.run does on `workdir` once it holds the lock and checked the config, with the shared context `ctx`."""
  ctx = imp.with_run_state(_with_output(ctx, workdir=workdir, watch=preempt.PreemptionWatch()))
  try:
    return imp._run_rounds(ctx)  # pylint: disable=protected-access
  finally:
    ctx.output.close()


def _preempt(ctx, workdir, branch, round_, step):
  """_run stopped after `step` of replicate 0's (branch, round_); asserts it stopped there."""
  train_pack = train.train_pack

  def stopping(ctx, jobs):
    if any((job.branch, job.round) == (branch, round_) for job in jobs):
      ctx = _with_output(ctx, watch=StopAfter(step))
    return train_pack(ctx, jobs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "train_pack", stopping)
    with pytest.raises(preempt.Preempted, match=rf"at step {step} of \[rep 0 {branch} round {round_}\]"):
      _run(ctx, workdir)
  assert not checkpoint.ticket_exists(workdir_lib.ticket_dir(workdir, branch, round_, 0))


def _assert_same_run(a, b):
  """Every ticket's masks and rewind point identical, trained weights and metrics equal to float rounding."""
  theta = lambda w: checkpoint.load_params(os.path.join(w, "init", "rep_0", "theta_2"))
  for x, y in zip(jax.tree.leaves(theta(a)), jax.tree.leaves(theta(b))):
    np.testing.assert_array_equal(x, y)
  for branch, r in [("imp", 0)] + [(branch, 1) for branch in BRANCHES]:
    ta, tb = (checkpoint.load_ticket(workdir_lib.ticket_dir(w, branch, r, 0)) for w in (a, b))
    assert_same_ticket(ta, tb, atol=1e-7, what=f"{branch} round {r}")
    for k in ("total", "content", "style"):
      assert tb.metrics[k] == pytest.approx(ta.metrics[k], rel=1e-5), (branch, r, k)
    assert tb.metrics["steps"] == ta.metrics["steps"] == (4 if r == 0 else 2)


@pytest.fixture(scope="module")
def rewinding(tmp_path_factory):
  """The shared run context (rewind to step 2 of 4, every baseline but oneshot) and its uninterrupted run's
  workdir."""
  config = tiny_config(imp__branches=",".join(BRANCHES), imp__rounds=1, imp__rewind_step=2, train__steps=4,
                       checkpoint__async_save=False)
  ctx = imp.setup(config_lib.resolve(config), str(tmp_path_factory.mktemp("setup")))
  reference = str(tmp_path_factory.mktemp("reference"))
  _run(ctx, reference)
  return ctx, reference


@pytest.mark.e2e
def test_preempted_before_theta_k_and_inside_baseline_rounds_the_resumed_run_matches(rewinding, tmp_path, capsys):
  """Stopped in the dense round before theta_k exists, then in random_prune, then in random_reinit (each time
  resumed), then run to the end: the uninterrupted run's tickets."""
  ctx, reference = rewinding
  workdir = str(tmp_path / "run")
  _preempt(ctx, workdir, "imp", 0, step=1)
  assert not checkpoint.params_exist(os.path.join(workdir, "init", "rep_0", "theta_2"))  # stopped before k = 2
  _preempt(ctx, workdir, "random_prune", 1, step=3)  # one step after the rewind point
  out = capsys.readouterr().out
  assert "[rep 0 imp round 0] resuming at step 1 from its checkpoint" in out
  assert "[rep 0 imp round 0] step 1/4" not in out.split("resuming at step 1")[1]  # not trained again from 0
  assert checkpoint.ticket_exists(workdir_lib.ticket_dir(workdir, "imp", 1, 0))
  _preempt(ctx, workdir, "random_reinit", 1, step=3)
  assert "[rep 0 random_prune round 1] resuming at step 3 from its checkpoint" in capsys.readouterr().out
  _run(ctx, workdir)
  out = capsys.readouterr().out
  assert "[rep 0 random_reinit round 1] resuming at step 3 from its checkpoint" in out
  assert "[rep 0 imp round 1] already done" in out and "[rep 0 random_prune round 1] already done" in out
  _assert_same_run(reference, workdir)


@pytest.mark.e2e
def test_second_run_on_a_workdir_stops(tmp_path):
  import socket

  sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    checkpoint.save_json(tmp_path / "run.lock", {"pid": sleeper.pid, "host": socket.gethostname(), "started": "x"})
    with pytest.raises(UserError, match=rf"^Another run \(PID {sleeper.pid} on .*\) is using the workdir '{tmp_path}'"):
      imp.run(config_lib.resolve(tiny_config()), str(tmp_path))
  finally:
    sleeper.kill()
    sleeper.wait()


def _png16_rgb(path, arr):
  import struct
  import zlib

  h, w, _ = arr.shape
  raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
  chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _every_kind_of_image(folder):
  """8 readable oddities and 4 unreadable files; returns the unreadable ones."""
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  noise = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  Image.fromarray(noise(12, 10)).save(os.path.join(folder, "smaller_than_crop.png"))
  Image.fromarray((rng.integers(0, 65536, (48, 40))).astype(np.uint16)).save(os.path.join(folder, "gray16.png"))
  _png16_rgb(os.path.join(folder, "rgb48.png"), rng.integers(0, 65536, (40, 44, 3)).astype(np.uint16))
  Image.fromarray(noise(40, 40)).convert("CMYK").save(os.path.join(folder, "cmyk.jpg"))
  Image.fromarray(noise(40, 48)).convert("P", palette=Image.Palette.ADAPTIVE).save(os.path.join(folder, "pal.png"))
  Image.fromarray(noise(44, 40)).convert("L").save(os.path.join(folder, "gray.png"))
  Image.fromarray(np.concatenate([noise(40, 40), noise(40, 40)[..., :1]], -1), "RGBA").save(
      os.path.join(folder, "rgba.png"))
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(noise(36, 48)).save(os.path.join(folder, "rotated.jpg"), exif=exif)
  bad = {name: os.path.join(folder, name) for name in ("truncated.jpg", "corrupt.png", "text.jpg", "empty.png")}
  Image.fromarray(noise(64, 64)).save(bad["truncated.jpg"])
  with open(bad["truncated.jpg"], "r+b") as f:
    f.truncate(400)
  with open(bad["corrupt.png"], "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + bytes(range(100)))
  with open(bad["text.jpg"], "w") as f:
    f.write("not an image\n")
  open(bad["empty.png"], "wb").close()
  return sorted(bad.values())


@pytest.mark.e2e
def test_folder_with_every_kind_of_bad_file_trains_and_reports_the_skips(tmp_path, capsys):
  bad = _every_kind_of_image(str(tmp_path / "content"))
  # 12 files, no holdout (eval images from the demo), 6 steps of 2: every file is drawn.
  config = tiny_config(data__content=str(tmp_path / "content"), imp__rounds=0, train__steps=6)
  rows = imp.run(config_lib.resolve(config), str(tmp_path / "run"))
  assert [(r["branch"], r["round"]) for r in rows] == [("imp", 0)]
  summary = checkpoint.load_json(tmp_path / "run" / "summary.json")["skipped_images"]
  assert summary["count"] == 4 and sorted(summary["first"]) == bad
  out = capsys.readouterr().out
  assert out.count("WARNING: skipping the unreadable content image") == 4
  assert "Data: skipped 4 unreadable images, each replaced by the next readable one" in out
  assert np.isfinite(checkpoint.load_ticket(workdir_lib.ticket_dir(str(tmp_path / "run"), "imp", 0)).metrics["total"])


@pytest.mark.e2e
def test_non_finite_loss_stops_the_round_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
  sample = pipeline._Sample.__call__

  def poisoned(self, j):  # global samples 6 and 7 = the 4th step (batch 2)
    out = sample(self, j)
    return dict(out, content=np.full_like(out["content"], np.nan)) if j in (6, 7) else out

  monkeypatch.setattr(pipeline._Sample, "__call__", poisoned)
  workdir = str(tmp_path / "run")
  config = tiny_config(imp__rounds=0, train__steps=6, train__log_every=3, checkpoint__every_steps=2)
  state_dir = os.path.join(workdir, "state")
  with pytest.raises(train.NonFiniteLoss, match=rf"non-finite at step 4 of \[rep 0 imp round 0\] .*the last good "
                                                rf"checkpoint is step 2 in '{state_dir}'"):
    imp.run(config_lib.resolve(config), workdir)
  assert sorted(state_checkpoints(workdir)) == [2]
  assert not checkpoint.ticket_exists(workdir_lib.ticket_dir(workdir, "imp", 0))
  params = glob.glob(os.path.join(state_dir, "2", "state"))
  assert params and not os.path.exists(os.path.join(workdir, "run.lock"))
