"""Device mesh and data placement for data-parallel training (one jit, batch sharded, state replicated)."""

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh over every device of every process, named 'data'."""
  # Auto axes: jit propagates the shardings itself (Explicit, the 0.10 default, would type them in every op).
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh):
  """Puts a host (numpy) tree on every device; numpy input avoids the multi-process device_put trap."""
  tree = jax.tree.map(np.asarray, tree)
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch, mesh):
  """Assembles this process's slice of the global batch into one array sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def check_batch_size(global_batch: int) -> None:
  """The batch must split evenly over devices and processes."""
  from jaxtickets.errors import UserError

  if global_batch % jax.device_count():
    raise UserError(f"config.train.batch_size = {global_batch} does not split over {jax.device_count()} devices: "
                    f"use a multiple of {jax.device_count()}.")
