"""jaxtickets.startup: libtpu's TPU probe quieted on machines without a TPU, and only there."""

import os
import subprocess
import sys

import pytest

from jaxtickets import startup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOISE = ("could not determine TPU accelerator type", "INVALID_ARGUMENT")


def test_device_files_are_found(tmp_path):
  assert startup.tpu_device_files(str(tmp_path)) == []
  for name in ("accel0", "accel1", "vfio", "null"):
    (tmp_path / name).touch()
  assert startup.tpu_device_files(str(tmp_path)) == [str(tmp_path / n) for n in ("accel0", "accel1", "vfio")]


def test_no_tpu_and_no_gpu_runs_on_the_cpu_without_asking_libtpu():
  assert startup.quiet_env({}, [], False, True, False) == {
      "JAX_PLATFORMS": "cpu", "TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
      "TPU_HOST_BOUNDS": "1,1,1"}


@pytest.mark.parametrize("env,files,pci,libtpu,gpu", [
    ({}, ["/dev/accel0"], False, True, False),  # a v4 TPU VM
    ({}, ["/dev/vfio"], False, True, False),  # a v5e/v6e TPU VM
    ({}, [], True, True, False),  # a TPU on the PCI bus
    ({}, [], False, False, False),  # no libtpu: nothing to quiet
    ({"JAX_FORCE_TPU_INIT": "1"}, [], False, True, False),
])
def test_nothing_changes_where_a_tpu_may_be_attached(env, files, pci, libtpu, gpu):
  assert startup.quiet_env(env, files, pci, libtpu, gpu) == {}


def test_a_gpu_plugin_keeps_the_platform_choice_and_set_variables_are_kept():
  assert "JAX_PLATFORMS" not in startup.quiet_env({}, [], False, True, True)
  env = {"JAX_PLATFORMS": "cuda,cpu", "TPU_WORKER_HOSTNAMES": "10.0.0.2"}
  assert startup.quiet_env(env, [], False, True, False) == {"TPU_SKIP_MDS_QUERY": "1", "TPU_HOST_BOUNDS": "1,1,1"}


def _stderr_of(code: str) -> str:
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS",) and not k.startswith("TPU_")}
  env["PYTHONPATH"] = ROOT
  run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
  assert run.returncode == 0, run.stderr[-2000:]
  return run.stderr


@pytest.mark.e2e
@pytest.mark.skipif(not startup.quiet_env({}, startup.tpu_device_files(), startup.tcmalloc.tpu_attached(),
                                          startup.importlib.util.find_spec("libtpu") is not None, False),
                    reason="needs libtpu installed on a machine without a TPU")
def test_importing_jaxtickets_first_silences_libtpu_and_plain_jax_does_not():
  # The control: JAX alone on this machine prints libtpu's probe, so the check below can fail.
  assert any(n in _stderr_of("import jax; jax.devices()") for n in NOISE)
  # What every entry point does: the package first, then JAX's devices and a TPU topology for the planner.
  quiet = _stderr_of("import jaxtickets, jax; jax.devices(); from jaxtickets.run import aot; aot.topology('v5e:2x2')")
  assert not any(n in quiet for n in NOISE), quiet
