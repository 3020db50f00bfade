"""What every jaxtickets process sets up before JAX starts (stdlib only; run when the package is imported).

With `.[tpu]` installed (libtpu, which `jaxtickets.plan` needs to compile for TPU topologies on any machine), libtpu
probes for a TPU when JAX first asks for devices or a topology, and on a machine without one it prints "could not
determine TPU accelerator type" and an `E0000 ... INVALID_ARGUMENT` line that look like failures. Where no TPU can
be attached (no /dev/accel*, no /dev/vfio, no TPU on the PCI bus):
- JAX_PLATFORMS=cpu, unless a GPU plugin is installed: JAX could only use the CPU, and libtpu is not asked;
- TPU_SKIP_MDS_QUERY=1 (what JAX itself sets on a machine without TPU chips: no query to the GCE metadata server),
  TPU_WORKER_HOSTNAMES=localhost and TPU_HOST_BOUNDS=1,1,1: what libtpu would otherwise read from that server and
  complain about when it loads to describe a topology for `jaxtickets.plan` (the topology's devices and the
  compiled program are the same either way).
A variable already set is never changed, and where a TPU device exists nothing is, so a real TPU's errors show.
"""

import glob
import importlib.util
import os
import sys

from jaxtickets import tcmalloc

_GPU_PLUGINS = tuple(m for m in tcmalloc._ACCELERATOR_MODULES)  # pylint: disable=protected-access
_LIBTPU_QUIET = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_HOST_BOUNDS": "1,1,1"}


def tpu_device_files(dev: str = "/dev") -> list[str]:
  """The device files through which a TPU VM reaches its chips (/dev/accel* up to v4, /dev/vfio from v5e)."""
  return sorted(glob.glob(os.path.join(dev, "accel*")) + glob.glob(os.path.join(dev, "vfio")))


def quiet_env(env: dict, device_files: list[str], tpu_on_pci: bool, libtpu_installed: bool,
              gpu_plugin: bool) -> dict:
  """The environment variables to set before JAX starts (none where a TPU may be attached or libtpu is absent)."""
  if not libtpu_installed or device_files or tpu_on_pci or env.get("JAX_FORCE_TPU_INIT"):
    return {}
  wanted = dict(_LIBTPU_QUIET)
  if not gpu_plugin:
    wanted["JAX_PLATFORMS"] = "cpu"
  return {k: v for k, v in wanted.items() if not env.get(k)}


def early_setup(env=None) -> dict:
  """Quiets libtpu's probe on a machine without a TPU (see the module's docstring); returns what it set. A no-op
  once JAX is imported: too late to matter for this process, and not ours to change."""
  env = os.environ if env is None else env
  if "jax" in sys.modules:
    return {}
  updates = quiet_env(env, tpu_device_files(), tcmalloc.tpu_attached(), importlib.util.find_spec("libtpu") is not None,
                      any(importlib.util.find_spec(m) is not None for m in _GPU_PLUGINS))
  env.update(updates)
  return updates
