"""Mixed precision: bfloat16 convs with float32 params, optimizer state and losses track float32 training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets import data
from jaxtickets.core import parallel, sparsity
from jaxtickets.run import train
from jaxtickets.models import get_model
from helpers import make_train_step, tiny_config

STEPS = 10


def _train(dtype: str):
  """10 steps of tiny AdaIN on the demo images; (losses, final state, lowered step text)."""
  config = tiny_config(model__dtype=dtype, train__batch_size=2)
  model = get_model("adain")(config.model)
  vgg = jax.device_get(model.init_vgg(jax.random.PRNGKey(0)))
  params = jax.device_get(model.init(jax.random.PRNGKey(1), vgg))
  masks = sparsity.ones_masks(params)
  mesh = parallel.make_mesh()
  tx = train.make_optimizer()
  step_fn = make_train_step(model, config_lib.resolve(config).step, tx, mesh)
  state = train.create_state(params, masks, 0, tx, mesh, model.trained_groups)
  masks_r, vgg_r, key = parallel.put_replicated(masks, mesh), parallel.put_replicated(vgg, mesh), jax.random.PRNGKey(2)
  batches = data.make_train_iterator(data.make_train_dataset(config_lib.resolve(config).data, 2), num_threads=0, prefetch=0)
  losses, text = [], None
  for _ in range(STEPS):
    batch = parallel.shard_batch(next(batches), mesh)
    if text is None:
      text = step_fn.lower(state, masks_r, vgg_r, batch, key).as_text()
    state, metrics = step_fn(state, masks_r, vgg_r, batch, key)
    metrics = jax.device_get(metrics)
    assert all(np.asarray(v).dtype == np.float32 for v in metrics.values()), metrics
    losses.append({k: float(v) for k, v in metrics.items()})
  return losses, state, text


@pytest.fixture(scope="module")
def runs():
  return {dtype: _train(dtype) for dtype in ("float32", "bfloat16")}


@pytest.mark.e2e  # trains and compiles the step twice (float32, bfloat16)
def test_bfloat16_loss_tracks_float32(runs):
  (l32, _, _), (l16, _, _) = runs["float32"], runs["bfloat16"]
  total32 = np.array([m["total"] for m in l32])
  total16 = np.array([m["total"] for m in l16])
  assert np.all(np.isfinite(total16))
  assert total32[-1] != total32[0]  # the steps trained
  # Same data, same init: every step's loss within a few percent, and the last one too.
  np.testing.assert_allclose(total16, total32, rtol=0.05)
  assert abs(total16[-1] / total32[-1] - 1) < 0.03
  assert total16.tolist() != total32.tolist()  # bf16 really changed the arithmetic


def test_bfloat16_keeps_params_optimizer_state_and_losses_float32(runs):
  _, state, text = runs["bfloat16"]
  leaves = jax.tree.leaves((state.params, state.opt_state))
  floats = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  assert all(np.all(np.isfinite(np.asarray(x))) for x in floats)
  # The convs compute in bf16 while the loss reductions come back in f32.
  convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
  assert convs and all("bf16" in line for line in convs)
  _, _, text32 = runs["float32"]
  assert "bf16" not in text32
