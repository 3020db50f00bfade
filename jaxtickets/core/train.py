"""Train state, optimizer, learning-rate schedule and the jitted, data-parallel, masked train step."""

import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxtickets.core import parallel, sparsity
from jaxtickets.errors import UserError


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # the iteration index i of the schedule; a rewound round starts at k
  params: Any
  opt_state: Any
  nan_skips: Any = None  # int32: batches skipped for a non-finite loss or gradient (nan_policy 'skip')
  first_bad: Any = None  # int32: the first step (1-based, as logged) whose loss was non-finite; -1 if none


class NonFiniteLoss(UserError):
  """A non-finite loss under nan_policy 'stop': the round ends, nothing saved is replaced."""


def state_dict(state: TrainState) -> dict:
  """The state's fields as a plain dict (what checkpoints store)."""
  return {f: getattr(state, f) for f in ("step", "params", "opt_state", "nan_skips", "first_bad")}


def state_from_dict(d: dict) -> TrainState:
  return TrainState(**d)


SCHEDULES = ("inverse", "epoch_step", "cosine")


def learning_rate(train_config, step):
  """The learning rate of (0-based) iteration `step`.

  'inverse':    lr / (1 + lr_decay * i) (AdaIN, SANet, MANet, MCCNet with 5e-5; LST's 1e-5 set after step k
                gives the same value for step k as this form before it).
  'epoch_step': lr * lr_epoch_factor ** max(0, epoch + 1 - lr_constant_epochs), epoch = i // epoch_steps
                (AdaAttN: constant for 2 epochs, then x0.3 per epoch).
  'cosine':     optax's cosine decay from lr to 0 over the round's `steps` iterations, after a linear warm-up of
                `warmup_steps` from 0: a round ends at the bottom of a descent, not at a random point of a walk.
  """
  schedule = train_config.schedule
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_config.lr, warmup_steps=train_config.warmup_steps,
        decay_steps=max(train_config.steps, train_config.warmup_steps + 1), end_value=0.0)(step)
  if schedule == "epoch_step":
    epoch = jnp.floor_divide(step, train_config.epoch_steps)
    exponent = jnp.maximum(0.0, epoch + 1.0 - train_config.lr_constant_epochs)
    return train_config.lr * jnp.power(train_config.lr_epoch_factor, exponent)
  return train_config.lr / (1.0 + train_config.lr_decay * step)


def split_groups(params: dict, groups) -> tuple[dict, dict]:
  """(the params of `groups`, the rest): only the first part is differentiated and optimized."""
  return ({g: v for g, v in params.items() if g in groups}, {g: v for g, v in params.items() if g not in groups})


@functools.lru_cache(maxsize=None)
def make_optimizer(eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam's direction only; the step scales it by the schedule, so a rewound round restarts the schedule at k.
  One object per eps, so the compiled steps built on it can be shared (see step_settings)."""
  return optax.scale_by_adam(b1=0.9, b2=0.999, eps=eps)


def create_state(params, masks, step: int, tx, mesh=None, trained_groups=None) -> TrainState:
  """A fresh state at `step`: masked params and a fresh optimizer (over `trained_groups`, default all); on the host,
  or replicated over `mesh`."""
  params = jax.tree.map(lambda p, m: np.where(m, p, 0).astype(p.dtype), jax.device_get(params), jax.device_get(masks))
  trained, _ = split_groups(params, params.keys() if trained_groups is None else trained_groups)
  state = TrainState(step=np.int32(step), params=params, opt_state=jax.device_get(optimizer_init(tx)(trained)),
                     nan_skips=np.int32(0), first_bad=np.int32(-1))
  return state if mesh is None else parallel.replicate(state, mesh)


@functools.lru_cache(maxsize=8)
def optimizer_init(tx) -> Callable:
  """tx.init as one program per optimizer (run eagerly, it compiles an op per leaf shape)."""
  return jax.jit(tx.init)


# The config.train fields a step reads (the schedule and the NaN policy); the rest (steps, logging...) do not
# change the compiled program.
STEP_FIELDS = ("schedule", "lr", "lr_decay", "epoch_steps", "lr_constant_epochs", "lr_epoch_factor", "nan_policy")
# The cosine schedule also reads the round's length; only it, so other schedules share a step across lengths.
COSINE_FIELDS = ("steps", "warmup_steps")


def step_settings(train_config) -> tuple:
  """The step's fields as a hashable key, so equal settings share one traced and compiled step: every run of a
  process (rounds, baselines, a study's sub-runs, stability copies) reuses it instead of tracing again."""
  fields = STEP_FIELDS + (COSINE_FIELDS if train_config.schedule == "cosine" else ())
  return tuple((f, train_config[f]) for f in fields)


def make_packed_step(model, train_config, tx, mesh, runs_per_device: int = 1, vmap: bool = True) -> Callable:
  """step(state, masks, vgg_params, batch, keys, ends) -> (state, metrics) for a pack of independent runs.

  Every argument but vgg_params has a leading run axis, sharded over the mesh's 'runs' axis; each run's batch is
  also sharded over 'data' (XLA all-reduces its gradients there). A device with one run of the pack calls the
  plain step on it; several runs per device are vmapped, or with vmap=False traced one after the other into the
  same program (vmapped conv weights become grouped convolutions, which XLA's CPU backend runs slowly). A run whose step has reached its `ends` entry is
  left as it is (a padded slot, or a run resumed further than its pack-mates), so one compiled step serves every
  pack. Equal settings (model, train config, optimizer, mesh, layout) return the same jitted function.
  """
  return _packed_step(model, step_settings(train_config), tx, mesh, runs_per_device, vmap)


@functools.lru_cache(maxsize=8)
def _packed_step(model, settings: tuple, tx, mesh, runs_per_device: int, vmap: bool) -> Callable:
  step_fn = masked_step(model, ml_collections.ConfigDict(dict(settings)), tx)

  def local_step(state, masks, vgg_params, batch, keys, ends):
    if runs_per_device == 1:
      first = lambda tree: jax.tree.map(lambda x: x[0], tree)
      new, metrics = step_fn(first(state), first(masks), vgg_params, first(batch), keys[0])
      new, metrics = jax.tree.map(lambda x: x[None], (new, metrics))
    elif vmap:
      new, metrics = jax.vmap(step_fn, in_axes=(0, 0, None, 0, 0))(state, masks, vgg_params, batch, keys)
    else:
      row = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
      outs = [step_fn(row(state, i), row(masks, i), vgg_params, row(batch, i), keys[i]) for i in range(runs_per_device)]
      new, metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    active = state.step < ends
    # lax.select rather than jnp.where: one op per leaf, not a nested jitted helper to trace per shape.
    keep = lambda n, o: jax.lax.select(jnp.broadcast_to(active.reshape(active.shape + (1,) * (n.ndim - 1)),
                                                        n.shape), n, o)
    return jax.tree.map(keep, new, state), metrics

  if mesh.shape[parallel.RUNS_AXIS] == 1:
    # One device group holds the whole pack: the plain jit partitions it over 'data' by itself and computes a
    # one-run pack with the plain step's rounding, so a packed run stays the run trained alone (shard_map would
    # round differently).
    runs_sharding = parallel.runs_sharding(mesh)
    return jax.jit(local_step, donate_argnums=(0,), out_shardings=(runs_sharding, runs_sharding))
  runs = P(parallel.RUNS_AXIS)
  packed = jax.shard_map(local_step, mesh=mesh, in_specs=(runs, runs, P(), runs, runs, runs),
                         out_specs=(runs, runs), axis_names={parallel.RUNS_AXIS},
                         check_vma=False)  # the models' custom VJPs do not type the run axis
  return jax.jit(packed, donate_argnums=(0,))


def masked_step(model, train_config, tx) -> Callable:
  """The un-jitted masked train step of one run: step(state, masks, vgg_params, batch, key) -> (state, metrics).

  A non-finite loss or gradient leaves params and optimizer state as they were (decided on device, no host sync)
  and records the step in state.first_bad; under nan_policy 'stop' every later step is a no-op too, so the host
  can stop at its next log or checkpoint interval with nothing non-finite in the state.
  """
  groups = model.trained_groups
  policy = train_config.nan_policy

  def step_fn(state, masks, vgg_params, batch, key):
    key = jax.random.fold_in(key, state.step)
    trained, frozen = split_groups(state.params, groups)
    trained_masks, _ = split_groups(masks, groups)

    def loss_fn(trained):
      params = sparsity.apply_masks({**frozen, **trained}, masks)
      return model.loss(params, vgg_params, batch["content"], batch["style"], key)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
    # Masking the gradient keeps Adam's moments of pruned weights at 0, so their updates are exactly 0; masking the
    # params again afterwards keeps them 0 under any optimizer.
    grads = sparsity.apply_masks(grads, trained_masks)
    direction, opt_state = tx.update(grads, state.opt_state, trained)
    lr = learning_rate(train_config, state.step.astype(jnp.float32))
    trained = jax.tree.map(lambda p, d: p - lr * d, trained, direction)
    params = {**frozen, **sparsity.apply_masks(trained, trained_masks)}
    metrics = dict(metrics, lr=lr)
    new = TrainState(step=state.step + 1, params=params, opt_state=opt_state, nan_skips=state.nan_skips,
                     first_bad=state.first_bad)
    return (new if state.first_bad is None else _guard(state, new, metrics["total"], grads, policy)), metrics

  return step_fn


def _guard(old: TrainState, new: TrainState, loss, grads, policy: str) -> TrainState:
  """`new`, or `old`'s params and optimizer state (step still advancing) where the loss or a gradient is not finite."""
  finite = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)],
                            jnp.isfinite(loss))
  ok = finite if policy == "skip" else finite & (old.first_bad < 0)
  # One conditional rather than a select per leaf: XLA would copy a select's scalar condition (this chain of one
  # test per leaf) into every leaf's fused select, bloating the step's optimised program.
  params, opt_state = jax.lax.cond(ok, lambda: (new.params, new.opt_state), lambda: (old.params, old.opt_state))
  first_bad = jnp.where((old.first_bad < 0) & ~finite, old.step + 1, old.first_bad).astype(jnp.int32)
  skips = old.nan_skips + (~finite).astype(jnp.int32) if policy == "skip" else old.nan_skips
  return TrainState(step=new.step, params=params, opt_state=opt_state, nan_skips=skips, first_bad=first_bad)


def non_finite_error(first_bad: int, label: str, last_good: str) -> NonFiniteLoss:
  return NonFiniteLoss(
      f"The loss became non-finite at step {first_bad} of {label.strip()} (config.train.nan_policy = 'stop'), so "
      f"the round stopped without saving anything after it; the last good checkpoint is {last_good}: lower "
      "config.train.lr or check the data and the VGG weights and resume with --allow_config_change, or set "
      "config.train.nan_policy='skip' to skip such batches.")
