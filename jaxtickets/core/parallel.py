"""Device mesh, data placement and multi-process start-up.

One jitted step runs over a 2-D mesh ('runs', 'data') of every device of every process. Independent runs (a
pack) are spread over 'runs'; each run's batch is sharded over 'data' and XLA inserts the gradient all-reduce
itself. With one run per step ('runs' of size 1) this is plain data parallelism: the state is replicated.
"""

import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
RUNS_AXIS = "runs"

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


def make_mesh(runs: int = 1, devices=None) -> jax.sharding.Mesh:
  """A 2-D mesh ('runs', 'data') over `devices` (default: every device of every process); `runs` must divide
  their number. Devices of several slices (multi-slice TPU) put the slices on 'runs' when they can (independent
  runs need no traffic between slices), else on 'data'."""
  from jaxtickets.errors import UserError

  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if runs < 1 or n % runs:
    raise UserError(f"A mesh of {runs} runs side by side does not divide the {n} devices: use a divisor of {n}.")
  check_mesh_devices(devices)
  shape = (runs, n // runs)
  # Auto axes: jit propagates the shardings itself (Explicit, the 0.10 default, would type them in every op and
  # make shard_map reject unsharded inputs).
  axis_types = (jax.sharding.AxisType.Auto,) * 2
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  try:
    if slices == 1:
      return jax.make_mesh(shape, (RUNS_AXIS, DATA_AXIS), axis_types=axis_types, devices=devices)
    from jax.experimental import mesh_utils
    if runs % slices == 0:
      ici, dcn = (runs // slices, n // runs), (slices, 1)
    elif (n // runs) % slices == 0:
      ici, dcn = (runs, n // runs // slices), (1, slices)
    else:
      raise UserError(f"A mesh of {runs} runs x {n // runs} data devices cannot be laid over {slices} slices: "
                      f"use a number of runs side by side that {slices} divides, or that divides {n // slices}.")
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                allow_split_physical_axes=_splits_physical_axes(devices))
    return jax.sharding.Mesh(grid, (RUNS_AXIS, DATA_AXIS), axis_types=axis_types)
  except (AssertionError, ValueError, NotImplementedError) as e:  # JAX's own mesh builders' refusals
    raise UserError(f"JAX cannot lay {n} {devices[0].device_kind} devices out as a {shape[0]} x {shape[1]} mesh: "
                    f"{str(e).splitlines()[0]}") from e


def _splits_physical_axes(devices) -> bool:
  # What jax.make_mesh allows per device kind: v5e's 2-D torus may be split to fit a logical axis.
  return devices[0].device_kind in ("TPU v5 lite", "TPU v5e")


def check_mesh_devices(devices) -> None:
  """Raises a one-sentence UserError for a device list no mesh can use: TPUs of two TensorCores (v4, v5p) listed
  per core, where a pod's jax.devices() lists one device per chip ("megacore")."""
  from jaxtickets.errors import UserError

  first = devices[0]
  if first.platform == "tpu" and any(getattr(d, "core_on_chip", 0) for d in devices):
    chips = len({(getattr(d, "slice_index", 0), tuple(d.coords)) for d in devices})
    raise UserError(f"The {len(devices)} {first.device_kind} devices are the TensorCores of {chips} chips, one device "
                    "per core; the mesh needs one device per chip, as a pod presents them (megacore mode), e.g. a "
                    "compile-only topology described with chip_config_name='megacore'.")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def runs_sharding(mesh) -> NamedSharding:
  """A pack's state, masks and keys: the leading run axis over 'runs', replicated over 'data'."""
  return NamedSharding(mesh, P(RUNS_AXIS))


def packed_batch_sharding(mesh) -> NamedSharding:
  """A pack's batches (runs, batch, ...): runs over 'runs', each run's batch over 'data'."""
  return NamedSharding(mesh, P(RUNS_AXIS, DATA_AXIS))


def put_replicated(tree, mesh):
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


def check_batch_size(global_batch: int, devices: int | None = None) -> None:
  """The batch must split evenly over the `devices` (default: every device, and so over processes)."""
  from jaxtickets.errors import UserError

  n = jax.device_count() if devices is None else devices
  if global_batch % n:
    raise UserError(f"config.train.batch_size = {global_batch} does not split over {n} devices "
                    f"({jax.process_count()} processes): use a multiple of {n}.")


def put_runs(tree, mesh):
  """Places a host tree whose leaves have a leading run axis on the mesh, runs over 'runs' (every process passes
  the whole tree and each device takes its runs' slice)."""
  sharding = runs_sharding(mesh)

  def put(x):
    x = np.array(x, copy=True)  # never aliases the caller's buffers, which the donated step would delete
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(put, tree)


def fetch(tree):
  """A device tree as host numpy on every process, gathering the slices other processes hold when needed."""
  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(get, tree)


def local_rows(mesh, runs: int, batch_size: int) -> dict[int, tuple[int, int]]:
  """For each run of a pack that this process holds a piece of: the rows [lo, hi) of its batch it must load.

  Devices of one process hold a contiguous block of each run's batch (the mesh's data axis is ordered by device),
  so each process loads only its own rows of only its own runs.
  """
  shape = (runs, batch_size)
  rows: dict[int, list[int]] = {}
  for index in packed_batch_sharding(mesh).addressable_devices_indices_map(shape).values():
    run_slice, row_slice = index[0], index[1]
    for run in range(*run_slice.indices(runs)):
      lo, hi, _ = row_slice.indices(batch_size)
      got = rows.setdefault(run, [lo, hi])
      got[0], got[1] = min(got[0], lo), max(got[1], hi)
  return {run: (lo, hi) for run, (lo, hi) in rows.items()}


def assemble_packed_batch(local: dict, rows: dict, runs: int, batch_size: int, mesh):
  """One global (runs, batch, ...) array per field from this process's rows of its runs.

  `local[run]` holds rows rows[run][0]:rows[run][1] of the run's batch (a dict of arrays) for every run in `rows`.
  """
  sharding = packed_batch_sharding(mesh)
  out = {}
  for field, sample in next(iter(local.values())).items():
    shape = (runs, batch_size) + np.shape(sample)[1:]

    def piece(index, field=field):
      start, stop, _ = index[1].indices(batch_size)
      return np.stack([np.asarray(local[run][field])[start - rows[run][0]:stop - rows[run][0]]
                       for run in range(*index[0].indices(runs))])

    out[field] = jax.make_array_from_callback(shape, sharding, piece)
  return out


_MESSAGE_BYTES = 2048


def agree(fn):
  """fn() on every process, and the first failure (by process id) raised on all of them.

  A problem one host alone sees (a file missing on its disk, a lock another run holds) would otherwise end that
  process while the others wait in their next collective until the coordination service aborts them. So the
  processes compare outcomes once fn is done: a UserError is raised everywhere with the failing process's
  sentence; another exception is re-raised where it happened and reported as that process's failure elsewhere.
  fn must not itself contain collectives.
  """
  if jax.process_count() == 1:
    return fn()
  from jax.experimental import multihost_utils

  from jaxtickets.errors import ConfigError, UserError

  result, error, message = None, None, ""
  try:
    result = fn()
  except UserError as e:  # 'C': a ConfigError, whose exit status (2) the others keep
    error, message = e, ("C" if isinstance(e, ConfigError) else "U") + str(e)
  except Exception as e:  # pylint: disable=broad-except  (reported to the others, re-raised here below)
    error, message = e, "E" + f"{type(e).__name__}: {e}"
  encoded = np.zeros(_MESSAGE_BYTES, np.uint8)
  raw = message.encode()[:_MESSAGE_BYTES]
  encoded[:len(raw)] = np.frombuffer(raw, np.uint8)
  everyone = np.asarray(multihost_utils.process_allgather(encoded))
  for pid, row in enumerate(everyone.reshape(jax.process_count(), _MESSAGE_BYTES)):
    text = bytes(row).rstrip(b"\0").decode(errors="replace")
    if not text:
      continue
    if pid == jax.process_index():
      raise error
    if text[0] in "UC":
      raise (ConfigError if text[0] == "C" else UserError)(text[1:])
    raise RuntimeError(f"process {pid} failed: {text[1:]}")
  return result
