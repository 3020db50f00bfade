"""The tests' environment (set before JAX is imported) and shared fixtures; the helpers are in helpers.py."""

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
# several times faster and compute the same values up to float rounding (no fast-math either way).
# One LLVM module per program instead of XLA's default split into parallel codegen parts: the parts save wall time
# only when a core is idle, and two test workers keep both busy, so splitting only adds work.
# Rounding can differ between a vmapped (packed) and a plain step, so the tests that compare masks across layouts
# set Adam's eps above rounding noise (1e-4), where near-tied pruning decisions cannot flip. Subprocesses inherit
# the flags; tests that add flags (8 fake devices) append to them.
XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_TEST_FLAGS}".strip()

# The tests run on the CPU, also where libtpu is installed (the .[tpu] extra, for the planner's topology compiles):
# JAX would otherwise try to start a TPU backend in every process. Compiling for a TPU topology needs no TPU backend,
# but each process that does it loads libtpu, which takes a lock only one process may hold unless told otherwise
# (the two test workers both compile).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

# The test processes run under tcmalloc, as the CPU entry points do (jaxtickets.tcmalloc): set here, before
# pytest-xdist starts its workers, they and every command they start load it (the commands then need no re-exec).
# XLA's compiler and JAX's tracing allocate heavily, which glibc's malloc serves more slowly.
from jaxtickets import tcmalloc  # pylint: disable=wrong-import-position

_TCMALLOC = tcmalloc.reexec_plan(dict(os.environ), tcmalloc.find_library(), tcmalloc.loaded_library(),
                                 tcmalloc.accelerator_installed())
if _TCMALLOC is not None:
  os.environ["LD_PRELOAD"] = _TCMALLOC["LD_PRELOAD"]

import pytest  # pylint: disable=wrong-import-position

from helpers import CLI_ARGS, ROOT, cli_env, tiny_config  # pylint: disable=wrong-import-position


# pytest-xdist hands whole files (--dist loadfile) to its two workers in collection order; by default it first
# sorts the files by their number of tests, which started the few-test, long end-to-end files last and left one
# worker idle while the other finished them. Here the longest files go first (the planner's TPU compiles, three
# minutes on one worker; the command-line and multi-process files; then the per-model IMP runs) and the rest keep
# pytest's order. test_main makes the shared command-line run (cli_reference) on the other worker while the planner
# compiles; test_parallel comes next so that test_storage and test_resume, which need that run too, find it made.
LONGEST_FILES_FIRST = ("test_plan.py", "test_main.py", "test_parallel.py", "test_storage.py", "test_resume.py",
                       "test_imp.py", "test_adaattn.py",
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
