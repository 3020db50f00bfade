"""The command line: bad input ends with one clear sentence, not a traceback."""

import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from jaxtickets import config as config_lib
from jaxtickets.run import imp
from jaxtickets.store import workdir as workdir_lib
from jaxtickets.errors import UserError
from helpers import CLI_ARGS, ROOT, cli_env, state_checkpoints, tiny_config


def run_main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "jaxtickets.main", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300)


COMMANDS = ("main", "plan", "study", "stylize", "export", "report", "stability")


def test_the_commands_import_side_by_side_as_libraries():
  """Each command defines its flags only when it runs (several share names such as --config), so its functions
  (main.train_and_evaluate, plan.make_plan, study.run...) import into one process, as a notebook or a test uses them."""
  import importlib
  for name in COMMANDS:
    module = importlib.import_module(f"jaxtickets.{name}")
    assert callable(module.define_flags) and callable(module.main)
  from jaxtickets import main
  assert callable(main.train_and_evaluate) and callable(main.resolve_run)


def test_a_workdir_that_is_a_file_is_one_sentence_before_anything_is_built(tmp_path):
  from jaxtickets import main  # pylint: disable=import-outside-toplevel
  (tmp_path / "run").write_text("not a folder")
  with pytest.raises(UserError, match=r"cannot be made: '.*run' is a file; choose another path"):
    main.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
  assert (tmp_path / "run").read_text() == "not a folder"


@pytest.mark.e2e
def test_cli_bad_input_is_one_sentence(tmp_path):
  """The command line turns validation's sentence into its error (every field's sentence: test_config)."""
  r = run_main("--config=configs/adain.py:demo", f"--workdir={tmp_path}", "--config.model.name=adan")
  assert r.returncode != 0
  assert "config.model.name = 'adan' is not allowed: choose one of adain" in r.stderr
  assert "Traceback" not in r.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("override,expected", [
    ("--config.imp.round=3", "error: config.imp.round does not exist; did you mean config.imp.rounds?"),
    ("--config.imp.zzzq=1", "error: config.imp.zzzq does not exist; check the spelling against jaxtickets/config.py"),
    ("--config.imp.rounds=x", "error: flag --config.imp.rounds=x: invalid literal for int()"),
    ("--config.impp.rounds=2", "error: config.impp.rounds cannot be set: config.impp does not exist; check the"),
])
def test_cli_misspelled_or_mistyped_override_is_one_line_and_exit_2(tmp_path, override, expected):
  r = run_main("--config=configs/adain.py:demo", f"--workdir={tmp_path}", override)
  assert r.returncode == 2 and r.stderr.startswith(expected), r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("module, text, expected", [
    ("jaxtickets.main", None, "no such file; pass a config file such as configs/adain.py"),
    ("jaxtickets.plan", "x = (\n", "a syntax error at line 1 ('(' was never closed); pass a config file")])
def test_cli_missing_or_broken_config_file_is_one_line_and_exit_2(tmp_path, module, text, expected):
  path = tmp_path / "my_config.py"
  if text is not None:
    path.write_text(text)
  r = subprocess.run([sys.executable, "-m", module, f"--config={path}", f"--workdir={tmp_path}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith(f"error: --config={path}: {expected}"), r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("module,config", [("jaxtickets.main", "configs/adain.py"),
                                           ("jaxtickets.study", "configs/study_adain.py")])
def test_cli_unknown_variant_is_one_line_naming_the_choices_and_exit_2(tmp_path, module, config):
  """Every command line that takes --config: the config file's sentence, not ml_collections' traceback."""
  r = subprocess.run([sys.executable, "-m", module, f"--config={config}:demox", f"--workdir={tmp_path}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  assert r.stderr.startswith(f"error: Unknown variant 'demox' of {config}: use '' (paper scale) or one of 'demo'"), \
      r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.e2e
def test_cli_override_of_a_section_the_config_lacks_is_one_line_and_exit_2(tmp_path):
  """The study's default variant sets no overrides: an override of one names the missing section and the fix."""
  r = subprocess.run([sys.executable, "-m", "jaxtickets.study", "--config=configs/study_adain.py",
                      "--config.overrides.imp.rounds=2", f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith(
      "error: config.overrides.imp.rounds cannot be set: config.overrides.imp does not exist; the config sets no "
      "such section of overrides: add it to the config file's overrides"), r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.e2e
def test_cli_without_data_names_the_fields_and_the_demo(tmp_path):
  r = run_main("--config=configs/adain.py", f"--workdir={tmp_path}")
  assert r.returncode != 0
  assert "set config.data.content and config.data.style" in r.stderr and "configs/adain.py:demo" in r.stderr
  assert "Traceback" not in r.stderr


def test_folder_without_images_is_named(tmp_path):
  empty = tmp_path / "styles"
  empty.mkdir()
  (empty / "notes.txt").write_text("not an image")
  config = tiny_config(data__style=str(empty), data__eval_style="demo")
  with pytest.raises(UserError, match="styles"):
    imp.run(config_lib.resolve(config), str(tmp_path / "run"))


@pytest.mark.e2e
def test_image_folders_train_end_to_end(tmp_path):
  """Content and style from folders of Pillow-written images (grayscale and RGBA among them)."""
  for kind in ("content", "style"):
    folder = tmp_path / kind / "sub"
    folder.mkdir(parents=True)
    for i, mode in enumerate(["RGB", "L", "RGBA", "RGB"]):
      Image.new(mode, (48 + 8 * i, 40), color=(40 * i + 10) if mode == "L" else (40 * i, 20, 200 - 40 * i, 255)[
          :len(mode)]).save(folder / f"{i}.png")
  config = tiny_config(data__content=str(tmp_path / "content"), data__style=str(tmp_path / "style"),
                       data__eval_content="", data__eval_style="", imp__rounds=1)
  config.eval.num_pairs = 1
  rows = imp.run(config_lib.resolve(config), str(tmp_path / "run"))
  assert [(r["branch"], r["round"]) for r in rows] == [("imp", 0), ("imp", 1)]


# ----------------------------------------------------------------------------- pods: several processes, one workdir

def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _pod(workdir, *extra, per_process=None):
  """The same command per process (as on a pod), two processes on this machine, one shared workdir."""
  port = _free_port()
  return [subprocess.Popen([sys.executable, "-m", "jaxtickets.main", *CLI_ARGS, f"--workdir={workdir}", *extra,
                            *((per_process or {}).get(i, [])), f"--coordinator_address=127.0.0.1:{port}",
                            "--num_processes=2", f"--process_id={i}"], cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for i in (0, 1)]


EVERY_RUN = [("imp", r, rep) for r in (0, 1) for rep in (0, 1)] + [("random_prune", 1, rep) for rep in (0, 1)]


def _assert_tickets_like(reference, workdir):
  """Every run (EVERY_RUN) of `workdir` has the reference's table row and ticket."""
  import csv

  import jax
  import numpy as np

  from jaxtickets.store import checkpoint

  # Sorted: a packed and an unpacked run finish their runs in different orders.
  table = lambda d: sorted(({k: r[k] for k in ("branch", "replicate", "round", "sparsity_prunable",
                                                "remaining_prunable")}
                            for r in csv.DictReader(open(os.path.join(d, "results.csv")))),
                           key=lambda r: (r["branch"], r["round"], r["replicate"]))
  assert len(table(workdir)) == len(EVERY_RUN) and table(workdir) == table(reference)
  for branch, round_, rep in EVERY_RUN:
    a = checkpoint.load_ticket(workdir_lib.ticket_dir(reference, branch, round_, rep))
    b = checkpoint.load_ticket(workdir_lib.ticket_dir(workdir, branch, round_, rep))
    for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)):
      np.testing.assert_array_equal(x, y, err_msg=f"{branch} {round_} {rep}")
    for x, y in zip(jax.tree.leaves(a.trained_params), jax.tree.leaves(b.trained_params)):
      # The demo's lr (1e-3) moves weights ~5e-3 in these 6 steps; packing and two processes round differently.
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=5e-5)
    assert b.metrics["total"] == pytest.approx(a.metrics["total"], rel=1e-4)
  for name in ("report.md", "summary.csv", "summary.json", "config.json"):
    assert os.path.exists(os.path.join(workdir, name)), name


@pytest.mark.e2e
def test_two_processes_packed_killed_then_resumed_unpacked_give_the_one_process_tickets(cli_reference, tmp_path):
  """A pod packed (each process holds one replicate: 'runs' spans the hosts), kill -9 of both processes in round 1,
  then the same command with packing off (each run's batch over both processes): the run packed in the killed
  command resumes from its slot of the pack's checkpoint, and every ticket is the one-process run's. Packing is
  resume-safe (config.RESUME_SAFE_FIELDS), so no --allow_config_change is needed. (The state directory holds one
  pack at a time, so replicate 1's round 1, the other run of that pack, starts its round again: docs/operations.md, Resume.)"""
  import signal
  import time

  workdir = tmp_path / "w"
  procs = _pod(workdir)
  deadline = time.time() + 900
  in_round_1 = lambda: any(run["round"] == 1 and run["step"] < 6
                           for meta in state_checkpoints(workdir).values() for run in meta["runs"])
  while not in_round_1():
    assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
    if time.time() > deadline:  # a hang guard, not a speed check
      pytest.fail("no checkpoint of round 1 appeared")
    time.sleep(0.05)
  for p in procs:
    p.send_signal(signal.SIGKILL)
  killed = [p.communicate() for p in procs]
  assert not os.path.exists(os.path.join(workdir, "tickets", "imp", "rep_0", "round_01")), "killed too late"
  assert "Packing: up to 2 runs side by side per step (2 on the mesh's 'runs' axis" in killed[0][0]
  assert "[2 runs side by side]" in killed[0][0]  # round 0 trained both replicates in one pack

  procs = _pod(workdir, "--config.parallel.pack_runs=false")
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out + err
  out0 = outs[0][0]
  assert "Packing" not in out0 and "side by side" not in out0 and "changed config" not in out0
  assert "[rep 0 imp round 0] already done" in out0 and "[rep 1 imp round 0] already done" in out0
  assert re.search(r"\[rep 0 imp round 1\] resuming at step [24] from its checkpoint", out0), out0
  # Process 0 writes the shared files and prints the summary; process 1 prints no run log.
  assert "Highest matching sparsity (imp)" in out0 and "Highest matching sparsity" not in outs[1][0]
  _assert_tickets_like(cli_reference, str(workdir))


@pytest.mark.e2e
def test_an_error_on_one_process_ends_every_process_with_its_sentence(tmp_path):
  """A problem only process 1 sees (here its own data flag: on a pod, a file missing on one host's disk)."""
  missing = str(tmp_path / "missing")
  procs = _pod(tmp_path / "w", per_process={1: [f"--config.data.content={missing}"]})
  outs = [p.communicate(timeout=600) for p in procs]
  sentence = f"config.data.content = '{missing}' does not exist: give a folder of images"
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 2, out + err  # a config mistake: exit 2 on every process, as for a bad flag
    assert sentence in err and "Traceback" not in err, err
