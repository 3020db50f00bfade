"""Shared fixtures: tiny configs that run the real pipeline in seconds."""

import os

# Many tests compile the very same tiny programs (the AdaIN step at 1/16 width, its eval step): JAX's persistent
# compilation cache lets every test after the first load them instead of recompiling. Set through the environment
# before JAX is imported, so the subprocesses the tests start (main, multi-process) share it too. Entries are keyed
# by the program and the JAX version, so a stale cache only costs disk.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax-compilation")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# The tests run tiny programs once or a few times, so compiling dominates: LLVM at optimisation level 0 without its
# expensive passes, and XLA's older loop emitters instead of its MLIR fusion emitters, compile XLA CPU programs
# several times faster (measured side by side, 2026-11-30: AdaAttN's tiny train step compiles in 17.1 s at O0 with
# the fusion emitters, 7.1 s without; the tiny AdaIN step took 54 s at XLA's defaults, 15.5 s at O0) and compute
# the same values up to float rounding (no fast-math either way; that step's updated params were bitwise equal).
# One LLVM module per program instead of XLA's default split into parallel codegen parts: the parts save wall time
# only when a core is idle, and two test workers keep both busy (measured 2026-12-01, the same StableHLO compiled in
# fresh processes: AdaAttN's train step 12.6-13.7 s CPU -> 10.1-11.3 s, its eval 3.1-3.3 -> 2.5-2.6 s).
# Rounding can differ between a vmapped (packed) and a plain step, so the tests that compare masks across layouts
# set Adam's eps above rounding noise (1e-4), where near-tied pruning decisions cannot flip. Subprocesses inherit
# the flags; tests that add flags (8 fake devices) append to them.
XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_FLAGS}".strip()

# The test processes run under tcmalloc, as the CPU entry points do (jaxtickets.tcmalloc): set here, before
# pytest-xdist starts its workers, they and every command they start load it (the commands then need no re-exec).
# XLA's compiler and JAX's tracing allocate heavily; under glibc's malloc a model's tiny train step took about 6%
# more CPU (measured 2026-12-01, MANet, fresh processes, 4 pairs).
from jaxtickets import tcmalloc  # pylint: disable=wrong-import-position

_TCMALLOC = tcmalloc.reexec_plan(dict(os.environ), tcmalloc.find_library(), tcmalloc.loaded_library(),
                                 tcmalloc.accelerator_installed())
if _TCMALLOC is not None:
  os.environ["LD_PRELOAD"] = _TCMALLOC["LD_PRELOAD"]

import pytest  # pylint: disable=wrong-import-position

from jaxtickets import config as config_lib  # pylint: disable=wrong-import-position


def tiny_config(**overrides):
  """AdaIN at 1/16 width on 32 px crops of the embedded demo images, 3 steps per round, Adam's eps 1e-4."""
  c = config_lib.default_config()
  c.model.name = "adain"
  c.model.width = 1 / 16
  c.data.content = c.data.style = c.data.eval_content = c.data.eval_style = "demo"
  c.data.load_size = 40
  c.data.crop_size = 32
  c.train.batch_size = 2
  c.train.steps = 3
  c.train.lr = 1e-3
  # Adam's eps above rounding noise (as CLI_ARGS): runs compared across layouts give the same masks, and every
  # tiny AdaIN run of a process shares one compiled step (eps is a constant of the step's program).
  c.train.adam_eps = 1e-4
  c.train.log_every = 1
  c.imp.rounds = 3
  c.imp.replicates = 1
  c.eval.num_pairs = 2
  c.eval.batch_size = 2
  for key, value in overrides.items():
    section, name = key.split("__") if "__" in key else (None, key)
    (c[section] if section else c)[name] = value
  return c


EARLY_BIRD = dict(imp__early_bird=True, imp__early_bird_every=1, imp__early_bird_epsilon=0.99,
                  imp__early_bird_patience=1)  # any two masks count as settled: a dense round of 3 steps stops at 2


def assert_early_bird_and_stability_work(workdir: str, round_: int) -> None:
  """For a run made with EARLY_BIRD: its dense round recorded the stop, and the stability of `round_` measures."""
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxtickets import stability  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, "summary.json")) as f:
    (bird,) = json.load(f)["early_bird"]
  assert bird["early_bird_step"] == 2 and bird["steps_trained"] == 2 and len(bird["history"]) == 1
  (row,) = stability.run(workdir, rounds=[round_], points=3)
  assert row["round"] == round_ and len(row["path"]) == 3 and np.all(np.isfinite(row["path"]))


# pytest-xdist hands whole files (--dist loadfile) to its two workers in collection order; by default it first
# sorts the files by their number of tests, which started the few-test, long end-to-end files last and left one
# worker idle while the other finished them. Here the longest files go first (their seconds in a cold run,
# 2026-12-01: test_main 163, test_resume 123, test_parallel 86, the per-model IMP runs 35-78, ...) and the rest keep
# pytest's order. test_parallel is second so that test_resume, which needs the same shared command-line run
# (cli_reference) as test_main, does not wait idle for it while the other worker makes it.
LONGEST_FILES_FIRST = ("test_main.py", "test_parallel.py", "test_resume.py", "test_imp.py", "test_adaattn.py",
                       "test_mccnet.py", "test_train.py", "test_manet.py", "test_study.py", "test_port.py",
                       "test_sanet.py", "test_lst.py", "test_bench.py", "test_stylize.py", "test_metric_names.py")


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist is installed
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its tests' order


@pytest.fixture
def tiny():
  return tiny_config


# ----------------------------------------------------------------------------- the shared command-line run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The command-line run of the end-to-end tests (test_main.py: pods; test_resume.py: kill -9, signals): AdaIN at 1/16
# width on 32 px crops, 6 steps per round with a checkpoint every 2, one pruned round, IMP and random pruning, 2
# replicates. Adam's eps is above rounding noise, so every layout (packed, unpacked, 2 processes) gives the same masks.
CLI_ARGS = ["--config=configs/adain.py:demo", "--config.model.width=0.0625", "--config.data.load_size=40",
            "--config.data.crop_size=32", "--config.train.batch_size=2", "--config.train.steps=6",
            "--config.train.log_every=1", "--config.checkpoint.every_steps=2", "--config.imp.rounds=1",
            "--config.imp.branches=imp,random_prune", "--config.imp.replicates=2", "--config.eval.num_pairs=2",
            "--config.train.adam_eps=1e-4"]


def state_checkpoints(workdir) -> dict:
  """{step: meta} of a workdir's finalized train-state checkpoints: Orbax writes a step into a temporary directory
  and renames it to the step when complete."""
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top

  found = {}
  for d in glob.glob(os.path.join(workdir, "state", "*")):
    name = os.path.basename(d)
    try:
      if name.isdigit():
        with open(os.path.join(d, "meta", "metadata")) as f:
          found[int(name)] = json.load(f)
    except (OSError, ValueError):
      pass  # deleted or being replaced while we looked
  return found


def cli_env() -> dict:
  """The children's environment: CPU only, unbuffered output (tests read it while the run goes on)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="session")
def cli_reference(tmp_path_factory) -> str:
  """The workdir of CLI_ARGS run uninterrupted as one process: made once per test session, pytest-xdist's workers
  share it (the first to ask runs it, the others wait for it)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  from filelock import FileLock  # pylint: disable=g-import-not-at-top

  base = tmp_path_factory.getbasetemp()
  shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # a worker's base is <session>/popen-gwN
  workdir = shared / "cli_reference"
  with FileLock(str(shared / "cli_reference.lock")):
    if not (shared / "cli_reference.done").exists():
      r = subprocess.run([sys.executable, "-m", "jaxtickets.main", *CLI_ARGS, f"--workdir={workdir}"], cwd=ROOT,
                         env=cli_env(), capture_output=True, text=True, timeout=900)
      assert r.returncode == 0, r.stdout + r.stderr
      (shared / "cli_reference.done").touch()
  return str(workdir)
