"""Helper for tests/test_parallel.py: trains a few steps (and optionally runs a tiny IMP) in a fresh process.

  python tests/_mp_worker.py --out DIR [--imp_packed WORKDIR]

Set XLA_FLAGS=--xla_force_host_platform_device_count=8 in the environment for 8 fake CPU devices. Writes
DIR/params_0.npz (the trained params) and DIR/run_0.json (losses, per-step sample hashes).
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

STEPS = 3
BATCH = 8


def config_for_tests():
  """The tests' tiny AdaIN config at a batch that splits over 8 devices and 2 processes."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top
  # Adam's eps well above rounding noise: with eps = 1e-8, a gradient that is ~0 up to summation-order rounding
  # (dead ReLU channels) still moves its weight by ~lr in a noise-given direction, which made 1 vs 8 devices
  # differ by ~4e-4 after 3 steps; with 1e-4 the runs differ only by rounding, so the masks must be identical.
  return tiny_config(train__batch_size=BATCH, imp__rounds=2, train__adam_eps=1e-4)


def packed_config_for_tests(pack_runs: bool = True):
  """2 replicates, IMP for 1 round, batch 4; packed, 2 runs per step: on 8 devices that is 'runs' = 2 x 'data' = 4,
  and each round's 2 runs fill one pack."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top
  return tiny_config(train__batch_size=4, imp__rounds=1, imp__replicates=2, imp__branches="imp",
                     train__adam_eps=1e-4, parallel__pack_runs=pack_runs, parallel__runs_per_step=2)


def sample_hash(batch: dict, k: int) -> str:
  """A content hash of sample k of a host batch (its content and style crops)."""
  return hashlib.sha1(np.ascontiguousarray(batch["content"][k]).tobytes()
                      + np.ascontiguousarray(batch["style"][k]).tobytes()).hexdigest()


def flat(tree) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def train_steps(config, steps: int = STEPS) -> dict:
  """Trains a half-pruned tiny AdaIN for `steps` on this process's share of the data; params, losses, hashes."""
  import jax  # pylint: disable=g-import-not-at-top
  from jaxtickets import config as config_lib, data  # pylint: disable=g-import-not-at-top
  from jaxtickets.core import parallel, sparsity
  from jaxtickets.run import train
  from jaxtickets.models import get_model  # pylint: disable=g-import-not-at-top

  model = get_model("adain")(config.model)
  vgg = jax.device_get(model.init_vgg(jax.random.PRNGKey(0)))
  params = jax.device_get(model.init(jax.random.PRNGKey(1), vgg))
  prunable = sparsity.prunable_leaves(params, ["encoder", "decoder"])
  masks = sparsity.global_magnitude_prune(params, sparsity.ones_masks(params), prunable, 0.5)
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size)
  tx = train.make_optimizer(config.train.adam_eps)
  from helpers import make_train_step  # pylint: disable=g-import-not-at-top
  step_fn = make_train_step(model, config_lib.resolve(config).step, tx, mesh)
  state = train.create_state(params, masks, 0, tx, mesh, model.trained_groups)
  masks_r, vgg_r = parallel.put_replicated(masks, mesh), parallel.put_replicated(vgg, mesh)
  dataset = data.make_train_dataset(config_lib.resolve(config).data, config.train.batch_size, jax.process_index(), jax.process_count())
  batches = data.make_train_iterator(dataset, num_threads=0, prefetch=0)
  key = jax.random.PRNGKey(3)
  losses, hashes = [], []
  for _ in range(steps):
    local = next(batches)
    hashes.append([sample_hash(local, k) for k in range(len(local["content"]))])
    state, metrics = step_fn(state, masks_r, vgg_r, parallel.shard_batch(local, mesh), key)
    losses.append(float(jax.device_get(metrics["total"])))
  return {"params": jax.device_get(state.params), "losses": losses, "hashes": hashes,
          "process_index": jax.process_index(), "process_count": jax.process_count(),
          "device_count": jax.device_count()}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--imp_packed", default="", help="also run imp.run packed (packed_config_for_tests) here")
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top

  config = config_for_tests()
  result = train_steps(config)
  pid = jax.process_index()
  np.savez(os.path.join(args.out, f"params_{pid}.npz"), **flat(result.pop("params")))
  if args.imp_packed:
    from jaxtickets import config as config_lib  # pylint: disable=g-import-not-at-top
    from jaxtickets.run import imp  # pylint: disable=g-import-not-at-top
    from jaxtickets.run import layout as layout_lib  # pylint: disable=g-import-not-at-top
    run = config_lib.resolve(packed_config_for_tests())
    imp.run(run, args.imp_packed)
    layout = layout_lib.choose_layout(run.packing, run.step.batch_size, concurrent=2)
    result["packed_layout"] = [layout.runs_per_step, layout.runs_axis]
  with open(os.path.join(args.out, f"run_{pid}.json"), "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  main()
