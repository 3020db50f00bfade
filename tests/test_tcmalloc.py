"""jaxtickets.tcmalloc: finding the library, deciding on the re-exec, and the re-exec itself in a child process."""

import os
import shutil
import subprocess
import sys

import pytest

from jaxtickets import tcmalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = "/usr/lib/libtcmalloc_minimal.so.4"


def test_plan_preloads_the_library_before_an_existing_preload():
  plan = tcmalloc.reexec_plan({"LD_PRELOAD": "/x/other.so", "PATH": "/bin"}, LIB, None, False, "linux")
  assert plan["LD_PRELOAD"] == f"{LIB}:/x/other.so"
  assert plan["PATH"] == "/bin" and plan["JAXTICKETS_TCMALLOC_REEXEC"] == "1"
  assert tcmalloc.reexec_plan({}, LIB, None, False, "linux")["LD_PRELOAD"] == LIB


@pytest.mark.parametrize("env,library,loaded,accelerator,platform", [
    ({"JAXTICKETS_TCMALLOC": "off"}, LIB, None, False, "linux"),  # switched off
    ({"JAXTICKETS_TCMALLOC_REEXEC": "1"}, LIB, None, False, "linux"),  # already re-executed once: never loop
    ({}, None, None, False, "linux"),  # not on this machine
    ({}, LIB, LIB, False, "linux"),  # loaded already
    ({}, LIB, None, True, "linux"),  # a GPU/TPU install keeps its allocator
    ({}, LIB, None, False, "darwin"),
])
def test_plan_leaves_the_process_alone(env, library, loaded, accelerator, platform):
  assert tcmalloc.reexec_plan(env, library, loaded, accelerator, platform) is None


def test_find_library_explicit_path_and_off(tmp_path):
  lib = tmp_path / "libtcmalloc_minimal.so.4"
  lib.write_bytes(b"")
  assert tcmalloc.find_library({"JAXTICKETS_TCMALLOC": str(lib)}) == str(lib)
  assert tcmalloc.find_library({"JAXTICKETS_TCMALLOC": str(tmp_path / "missing.so")}) is None


def test_loaded_library_reads_the_maps(tmp_path):
  maps = tmp_path / "maps"
  maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n"
                  "7f02-7f03 r-xp 0 08:01 2 /opt/v/lib/libtcmalloc_minimal.so.4\n")
  assert tcmalloc.loaded_library(str(maps)) == "/opt/v/lib/libtcmalloc_minimal.so.4"
  maps.write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
  assert tcmalloc.loaded_library(str(maps)) is None
  assert tcmalloc.loaded_library(str(tmp_path / "none")) is None


def test_tpu_attached_reads_tpu_device_ids_not_any_google_device(tmp_path):
  def device(name, vendor, device_id):
    (tmp_path / name).mkdir()
    (tmp_path / name / "vendor").write_text(vendor + "\n")
    (tmp_path / name / "device").write_text(device_id + "\n")

  device("0000:00:04.0", "0x1ae0", "0x0042")  # a cloud VM's network card: Google's, but no TPU
  device("0000:00:05.0", "0x8086", "0x0063")
  assert not tcmalloc.tpu_attached(str(tmp_path))
  device("0000:00:06.0", "0x1ae0", "0x0063")  # a v5e chip
  assert tcmalloc.tpu_attached(str(tmp_path))


def _stand_in_library(tmp_path) -> str:
  """A harmless shared library under tcmalloc's name (a copy of libm), so the re-exec runs on any Linux box."""
  libm = next((p for p in ("/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6",
                           "/usr/lib/aarch64-linux-gnu/libm.so.6", "/usr/lib64/libm.so.6") if os.path.exists(p)), None)
  assert libm, "no libm.so.6 found to stand in for tcmalloc"
  lib = tmp_path / "libtcmalloc_minimal.so.4"
  shutil.copy(libm, lib)
  return str(lib)


CHILD = """
import os, sys
from jaxtickets import tcmalloc
print("start", os.environ.get("JAXTICKETS_TCMALLOC_REEXEC", "-"), flush=True)
tcmalloc.preload()
print("loaded", tcmalloc.loaded_library(), "args", sys.argv[1:], flush=True)
"""


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")
def test_preload_reexecutes_the_same_command_once(tmp_path):
  lib = _stand_in_library(tmp_path)
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "JAXTICKETS_TCMALLOC_REEXEC")}
  env.update(JAXTICKETS_TCMALLOC=lib, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, str(script), "--flag=1", "x"], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.splitlines()
  # The first run re-executed itself (no 'loaded' line from it), the second one runs with the library mapped.
  assert out == ["start -", "start 1", f"loaded {lib} args ['--flag=1', 'x']"]

  # `python -m module` is re-executed as a module (the interpreter's own command line is replayed).
  (tmp_path / "child_module.py").write_text(CHILD)
  env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{tmp_path}"
  out = subprocess.run([sys.executable, "-m", "child_module", "y"], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout.splitlines()
  assert out == ["start -", "start 1", f"loaded {lib} args ['y']"]

  env["JAXTICKETS_TCMALLOC"] = "off"
  out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120,
                       check=True).stdout.splitlines()
  assert out == ["start -", "loaded None args []"]
