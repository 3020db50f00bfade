"""Device mesh, data placement and multi-process start-up for data-parallel training.

One jitted step runs over a 1-D mesh of every device of every process: the batch is sharded over 'data', the
state is replicated, and XLA inserts the gradient all-reduce itself (no pmap, no shard_map).
"""

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables read by initialize_distributed (the first is also jax.distributed's own).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    from jaxtickets.errors import UserError
    raise UserError(f"The environment variable {name}={value!r} is not an integer: set it to a number or unset it.")


def _cluster_detected() -> bool:
  """Whether JAX recognises a multi-host launcher (Cloud TPU pod, GKE, SLURM, Open MPI) around this process."""
  try:
    from jax._src import clusters  # private, so guarded: a missing detector only means "not detected"
    return any(not env.opt_in_only_method and env.is_env_present() for env in clusters.ClusterEnv._cluster_types)
  except Exception:  # pylint: disable=broad-except
    return False


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins a multi-process run before anything touches a device; returns whether jax.distributed is running.

  Explicit arguments win, then the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID),
  then JAX's own cluster auto-detection (TPU pods, SLURM, Open MPI). A single-process run is a no-op, and a
  second call returns at once, so it is safe to call from every entry point.
  """
  if jax.distributed.is_initialized():
    return True
  from jaxtickets.errors import UserError

  address = coordinator_address or os.environ.get(ENV_COORDINATOR, "").strip() or None
  num = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
  if address is None and num is None and pid is None:
    if not _cluster_detected():
      return False
    jax.distributed.initialize()  # the launcher's environment names the coordinator, count and rank
    return True
  if num == 1 and pid in (None, 0):
    return False
  if address is None or num is None or pid is None:
    raise UserError(f"A multi-process run needs the coordinator address, the number of processes and this "
                    f"process's id (got {address!r}, {num!r}, {pid!r}): set all three flags, or "
                    f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}.")
  if not (num > 0 and 0 <= pid < num):
    raise UserError(f"The process id {pid} is not in [0, {num}) for {num} processes: give each process a "
                    f"distinct id from 0 to {num - 1}.")
  if ":" not in address:
    raise UserError(f"The coordinator address {address!r} lacks a port: write it as HOST:PORT, e.g. 10.0.0.1:1234.")
  jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
  return True


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, named 'data'."""
  # Auto axes: jit propagates the shardings itself (Explicit, the 0.10 default, would type them in every op and
  # make shard_map reject unsharded inputs).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh):
  """Puts a copy of a host tree on every device.

  Going through numpy avoids two traps: in a multi-process run device_put of a jax array onto the global mesh
  fails (it has one shard per local device), and device_put of a jax array is zero-copy for device 0, so
  donating the result would delete the caller's array. The result never aliases the caller's buffers.
  """
  # An explicit host copy: on CPU device_put may still be zero-copy for suitably aligned numpy buffers, so the
  # device array could otherwise see the caller's later writes.
  tree = jax.tree.map(lambda x: np.array(x, copy=True), tree)
  return jax.device_put(tree, replicated(mesh), may_alias=False)


def shard_batch(batch, mesh):
  """Assembles this process's slice of the global batch into one array sharded over 'data'.

  On CPU the result may share memory with `batch` (zero-copy), so the step must not donate it.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def check_batch_size(global_batch: int) -> None:
  """The batch must split evenly over devices (and so over processes)."""
  from jaxtickets.errors import UserError

  if global_batch % jax.device_count():
    raise UserError(f"config.train.batch_size = {global_batch} does not split over {jax.device_count()} devices "
                    f"({jax.process_count()} processes): use a multiple of {jax.device_count()}.")
