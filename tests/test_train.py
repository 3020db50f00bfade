"""The train state, the schedule and the masked, jitted train step."""

import jax
import numpy as np
import optax
import pytest

from jaxtickets import config as config_lib
from jaxtickets.core import parallel, sparsity
from jaxtickets.run import train
from jaxtickets.models import get_model
from helpers import make_train_step, tiny_config, tiny_settings


@pytest.fixture(scope="module")
def pieces():
  config = tiny_config()
  model = get_model("adain")(config.model)
  key = jax.random.PRNGKey(0)
  vgg = jax.device_get(model.init_vgg(key))
  params = jax.device_get(model.init(jax.random.PRNGKey(1), vgg))
  prunable = sparsity.prunable_leaves(params, ["encoder", "decoder"])
  masks = sparsity.global_magnitude_prune(params, sparsity.ones_masks(params), prunable, 0.5)
  mesh = parallel.make_mesh()
  tx = train.make_optimizer()
  step_fn = make_train_step(model, config_lib.resolve(config).step, tx, mesh)
  rng = np.random.default_rng(0)
  batch = {"content": rng.random((2, 32, 32, 3), np.float32), "style": rng.random((2, 32, 32, 3), np.float32)}
  return config, model, vgg, params, masks, mesh, tx, step_fn, batch


def test_learning_rate_schedule():
  c = tiny_settings().step
  for i in (0, 1, 1000, 160_000):
    assert train.learning_rate(c, i) == pytest.approx(c.lr / (1 + c.lr_decay * i))


def test_every_schedule_the_config_accepts_is_built_and_only_those():
  assert config_lib.SCHEDULES == train.SCHEDULES
  for name in train.SCHEDULES:  # each builds a learning rate at a step
    assert train.learning_rate(tiny_settings(train__schedule=name, train__steps=10).step, 3) > 0


def test_epoch_step_schedule_is_adaattns():
  c = tiny_settings(train__schedule="epoch_step", train__lr=2e-4, train__epoch_steps=100,
                    train__lr_constant_epochs=2, train__lr_epoch_factor=0.3).step
  # Epochs 1-2 at 2e-4, then x0.3 per epoch: 6e-5, 1.8e-5, 5.4e-6 (models.md section 6.5).
  want = {0: 2e-4, 99: 2e-4, 100: 2e-4, 199: 2e-4, 200: 6e-5, 299: 6e-5, 300: 1.8e-5, 450: 5.4e-6}
  for i, lr in want.items():
    assert float(train.learning_rate(c, np.float32(i))) == pytest.approx(lr, rel=1e-5), i


def test_frozen_groups_get_no_update_and_no_optimizer_state(pieces):
  config, model, vgg, params, masks, mesh, tx, _, batch = pieces

  class DecoderOnly(type(model)):
    trained_groups = ("decoder",)

  frozen_model = DecoderOnly(config.model)
  state = train.create_state(params, masks, 0, tx, mesh, frozen_model.trained_groups)
  assert set(state.opt_state.mu) == {"decoder"}
  step_fn = make_train_step(frozen_model, config_lib.resolve(config).step, tx, mesh)
  state, _ = step_fn(state, parallel.put_replicated(masks, mesh), parallel.put_replicated(vgg, mesh),
                     parallel.shard_batch(batch, mesh), jax.random.PRNGKey(0))
  after = jax.device_get(state.params)
  masked = sparsity.apply_masks(params, masks)
  for a, b in zip(jax.tree.leaves(after["encoder"]), jax.tree.leaves(masked["encoder"])):
    np.testing.assert_array_equal(a, b)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["decoder"]),
                                                     jax.tree.leaves(masked["decoder"]))]
  assert any(moved)


def test_create_state_is_masked_with_fresh_optimizer(pieces):
  _, _, _, params, masks, mesh, tx, _, _ = pieces
  state = train.create_state(params, masks, 7, tx, mesh)
  assert int(state.step) == 7
  for p, m, p0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(p), np.where(m, p0, 0))
  adam = state.opt_state
  assert int(adam.count) == 0
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves((adam.mu, adam.nu)))


def test_pruned_weights_stay_zero_and_others_move(pieces):
  _, _, vgg, params, masks, mesh, tx, step_fn, batch = pieces
  state = train.create_state(params, masks, 0, tx, mesh)
  vgg_r = parallel.put_replicated(vgg, mesh)
  masks_r = parallel.put_replicated(masks, mesh)
  key = jax.random.PRNGKey(3)
  losses = []
  for _ in range(5):
    state, metrics = step_fn(state, masks_r, vgg_r, parallel.shard_batch(batch, mesh), key)
    losses.append(float(metrics["total"]))
  moved = 0
  for p, m, p0 in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks), jax.tree.leaves(params)):
    p = np.asarray(p)
    assert np.all(p[~m] == 0)
    moved += int(np.sum(p[m] != p0[m]))
  assert moved > 0
  assert int(state.step) == 5
  assert losses[-1] < losses[0]  # the same batch five times: Adam must bring the loss down


def test_step_matches_a_hand_written_adam_step(pieces):
  config, model, vgg, params, masks, mesh, tx, step_fn, batch = pieces
  state = train.create_state(params, masks, 3, tx, mesh)
  key = jax.random.PRNGKey(3)
  new, metrics = step_fn(state, parallel.put_replicated(masks, mesh), parallel.put_replicated(vgg, mesh),
                         parallel.shard_batch(batch, mesh), key)
  masked = sparsity.apply_masks(params, masks)
  grads = jax.jit(jax.grad(lambda p: model.loss(sparsity.apply_masks(p, masks), vgg, batch["content"], batch["style"],
                                        jax.random.fold_in(key, 3))[0]))(masked)
  lr = config.train.lr / (1 + config.train.lr_decay * 3)
  assert float(metrics["lr"]) == pytest.approx(lr)
  for p, g, m, got in zip(jax.tree.leaves(masked), jax.tree.leaves(grads), jax.tree.leaves(masks),
                          jax.tree.leaves(new.params)):
    g = np.where(m, np.asarray(g), 0)
    # First Adam step: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
    want = np.where(m, np.asarray(p) - lr * g / (np.abs(g) + 1e-8), 0)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_non_finite_loss_keeps_the_old_state_and_is_recorded(pieces, policy):
  config, model, vgg, params, masks, mesh, tx, step_fn, batch = pieces
  assert config.train.nan_policy == "stop"  # the default; 'skip' needs its own step
  if policy == "skip":
    step_fn = make_train_step(model, tiny_settings(train__nan_policy="skip").step, tx, mesh)
  state = train.create_state(params, masks, 0, tx, mesh)
  vgg_r, masks_r, key = parallel.put_replicated(vgg, mesh), parallel.put_replicated(masks, mesh), jax.random.PRNGKey(3)
  bad = dict(batch, content=np.full_like(batch["content"], np.nan))
  snapshots = []
  for b in (batch, bad, batch, bad, batch):  # steps 1..5; 2 and 4 are non-finite
    before = jax.device_get(state.params)
    state, metrics = step_fn(state, masks_r, vgg_r, parallel.shard_batch(b, mesh), key)
    snapshots.append((before, jax.device_get(state.params), bool(np.isfinite(float(metrics["total"])))))
  assert int(state.step) == 5
  first_bad, skips = (int(x) for x in jax.device_get((state.first_bad, state.nan_skips)))
  assert first_bad == 2
  for i, (before, after, finite) in enumerate(snapshots, start=1):
    changed = any(np.any(a != b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
    # 'stop': nothing moves from the first bad step on; 'skip': only the bad steps stand still.
    assert changed == (i < 2 if policy == "stop" else finite)
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(after))
  assert skips == (2 if policy == "skip" else 0)
  if policy == "skip":  # the skipped batches left Adam's count alone: 3 real updates
    assert int(state.opt_state.count) == 3


def _packed(pieces, runs_per_device, vmap=True):
  """Two runs (other inits, masks, batches and keys) as a pack on this device, and each alone with the plain step."""
  config, model, vgg, params, masks, mesh, tx, step_fn, batch = pieces
  other = jax.device_get(model.init(jax.random.PRNGKey(7), vgg))
  prunable = sparsity.prunable_leaves(other, ["encoder", "decoder"])
  runs = [(params, masks), (other, sparsity.global_magnitude_prune(other, sparsity.ones_masks(other), prunable, 0.3))]
  batches = [batch, {k: v[::-1] * 0.5 for k, v in batch.items()}]
  keys = [np.asarray(jax.random.PRNGKey(3)), np.asarray(jax.random.PRNGKey(4))]
  states = [jax.device_get(train.create_state(p, m, 0, tx, mesh, model.trained_groups)) for p, m in runs]
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
  n = runs_per_device
  packed = train.make_packed_step(model, config_lib.resolve(config).step, tx, mesh, runs_per_device=n, vmap=vmap)
  put = lambda tree: parallel.put_runs(tree, mesh)
  args = dict(masks=put(stack([m for _, m in runs][:n])), batch=put(stack(batches[:n])), keys=put(np.stack(keys[:n])))
  return runs[:n], batches[:n], keys[:n], train.state_from_dict(put(stack([train.state_dict(s) for s in states[:n]]))), \
      packed, args


# Two runs vmapped on one device stay in the developer loop; one run, and two traced one after the other, compile
# programs of their own and run in the whole suite.
@pytest.mark.parametrize("runs_per_device, vmap", [pytest.param(1, True, marks=pytest.mark.e2e), (2, True),
                                                  pytest.param(2, False, marks=pytest.mark.e2e)])
def test_packed_step_trains_each_run_as_it_trains_alone(pieces, runs_per_device, vmap):
  config, model, vgg, _, _, mesh, tx, step_fn, _ = pieces
  runs, batches, keys, state, packed, a = _packed(pieces, runs_per_device, vmap)
  vgg_r = parallel.put_replicated(vgg, mesh)
  ends = parallel.put_runs(np.full(len(runs), 100, np.int32), mesh)
  for _ in range(2):
    state, metrics = packed(state, a["masks"], vgg_r, a["batch"], a["keys"], ends)
  got = parallel.fetch(state.params)
  for i, ((params, masks), batch, key) in enumerate(zip(runs, batches, keys)):
    alone = train.create_state(params, masks, 0, tx, mesh, model.trained_groups)
    for _ in range(2):
      alone, alone_metrics = step_fn(alone, parallel.put_replicated(masks, mesh), vgg_r, parallel.shard_batch(batch, mesh),
                                     key)
    want = jax.device_get(alone.params)
    for g, w in zip(jax.tree.leaves(jax.tree.map(lambda x: x[i], got)), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    assert float(metrics["total"][i]) == pytest.approx(float(alone_metrics["total"]), rel=1e-5)
    assert int(jax.device_get(state.step)[i]) == 2
  if len(runs) == 2:  # the two runs did differ: a pack that trained one run twice would fail above
    assert float(metrics["total"][0]) != pytest.approx(float(metrics["total"][1]), rel=1e-3)


def test_packed_step_leaves_a_run_at_its_end_as_it_is(pieces):
  _, _, vgg, _, _, mesh, _, _, _ = pieces
  runs, _, _, state, packed, a = _packed(pieces, 2)
  before = jax.device_get(train.state_dict(state))
  vgg_r = parallel.put_replicated(vgg, mesh)
  ends = parallel.put_runs(np.array([2, 0], np.int32), mesh)  # run 1 is at its end already (a padded slot)
  for _ in range(3):
    state, _ = packed(state, a["masks"], vgg_r, a["batch"], a["keys"], ends)
  after = jax.device_get(train.state_dict(state))
  assert list(after["step"]) == [2, 0]  # run 0 stopped at its end too
  for x, y in zip(jax.tree.leaves(after["params"]), jax.tree.leaves(before["params"])):
    np.testing.assert_array_equal(x[1], y[1])
  assert any(not np.array_equal(x[0], y[0]) for x, y in zip(jax.tree.leaves(after["params"]),
                                                            jax.tree.leaves(before["params"])))
