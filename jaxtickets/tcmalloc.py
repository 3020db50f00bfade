"""Runs the CPU job under tcmalloc when the machine has it.

XLA's CPU runtime allocates fresh buffers every step; under glibc malloc each one page-faults anew (~1 M minor
faults per AdaIN step, a third of the step in system time). tcmalloc keeps the pages, and a preload is the only way
to swap the allocator, so `preload()` re-executes the process once with LD_PRELOAD set. It does nothing on GPU/TPU
installs, off Linux, when tcmalloc is already loaded or cannot be found, and when JAXTICKETS_TCMALLOC=off.

Where it looks: $JAXTICKETS_TCMALLOC (a path), <venv>/lib (scripts/install_tcmalloc.sh puts it there without
root), the dynamic linker's cache (`apt-get install libtcmalloc-minimal4`), the usual system directories.
"""

import glob
import importlib.util
import os
import subprocess
import sys

ENV = "JAXTICKETS_TCMALLOC"
_GUARD = "JAXTICKETS_TCMALLOC_REEXEC"  # set in the re-executed process: never loop
LIBRARY = "libtcmalloc_minimal.so.4"
_SYSTEM_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
# Installed accelerator plugins: the job will not run on the CPU, keep the process as it is.
_ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin")
# libtpu is also installed on CPU machines that only compile for TPU topologies (jaxtickets.plan), so it counts only
# when a TPU chip is attached: a PCI device of Google's vendor id with a TPU's device id (the ids JAX's own hardware
# check knows; Google's vendor id alone also covers a cloud VM's network card).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = ("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")


def loaded_library(maps_path: str = "/proc/self/maps") -> str | None:
  """The tcmalloc library mapped into this process, if any."""
  try:
    with open(maps_path) as f:
      maps = f.read()
  except OSError:
    return None
  return next((line.split()[-1] for line in maps.splitlines() if "libtcmalloc" in line.rsplit("/", 1)[-1]), None)


def find_library(env: dict | None = None) -> str | None:
  """The path of libtcmalloc_minimal on this machine, or None."""
  env = os.environ if env is None else env
  explicit = env.get(ENV, "")
  if explicit and explicit.lower() not in ("off", "0", "no", "false"):
    return explicit if os.path.isfile(explicit) else None
  candidates = [os.path.join(sys.prefix, "lib", LIBRARY)]
  try:
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    candidates += [line.split("=>")[-1].strip() for line in cache.splitlines() if LIBRARY in line]
  except (OSError, subprocess.SubprocessError):
    pass
  candidates += [os.path.join(d, LIBRARY) for d in _SYSTEM_DIRS]
  return next((c for c in candidates if os.path.isfile(c)), None)


def tpu_attached(pci_devices: str = "/sys/bus/pci/devices") -> bool:
  """Whether a TPU chip is attached to this machine (read from the PCI devices, without starting JAX)."""
  for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
    try:
      with open(vendor) as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor), "device")) as f:
        if f.read().strip() in _TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def accelerator_installed() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip() not in ("cpu", "")
  if any(importlib.util.find_spec(m) is not None for m in _ACCELERATOR_MODULES):
    return True
  return importlib.util.find_spec("libtpu") is not None and tpu_attached()


def reexec_plan(env: dict, library: str | None, loaded: str | None, accelerator: bool,
                platform: str = sys.platform) -> dict | None:
  """The environment to re-execute with, or None when the process should run as it is."""
  if env.get(ENV, "").lower() in ("off", "0", "no", "false") or env.get(_GUARD):
    return None
  if not platform.startswith("linux") or accelerator or loaded or not library:
    return None
  new_env = dict(env)
  new_env["LD_PRELOAD"] = ":".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
  new_env[_GUARD] = "1"
  return new_env


def preload() -> None:
  """Re-executes this very command under tcmalloc when that applies (call it first thing in an entry point)."""
  plan = reexec_plan(dict(os.environ), find_library(), loaded_library(), accelerator_installed())
  if plan is None:
    return
  # sys.orig_argv is the interpreter's own command line, `-m jaxtickets.main` included.
  argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *argv[1:]], plan)
  except OSError:
    pass  # carry on with the system allocator: slower, not wrong
