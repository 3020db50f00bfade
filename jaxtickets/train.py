"""Train state, optimizer, learning-rate schedule and the jitted, data-parallel, masked train step."""

import time
from typing import Any, Callable, Iterator

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtickets import parallel, sparsity


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # the iteration index i of the schedule; a rewound round starts at k
  params: Any
  opt_state: Any


SCHEDULES = ("inverse", "epoch_step")


def learning_rate(train_config, step):
  """The learning rate of (0-based) iteration `step`.

  'inverse':    lr / (1 + lr_decay * i) (AdaIN, SANet, MANet, MCCNet with 5e-5; LST's 1e-5 set after step k
                gives the same value for step k as this form before it).
  'epoch_step': lr * lr_epoch_factor ** max(0, epoch + 1 - lr_constant_epochs), epoch = i // epoch_steps
                (AdaAttN: constant for 2 epochs, then x0.3 per epoch).
  """
  schedule = train_config.get("schedule", "inverse")
  if schedule == "epoch_step":
    epoch = jnp.floor_divide(step, train_config.epoch_steps)
    exponent = jnp.maximum(0.0, epoch + 1.0 - train_config.lr_constant_epochs)
    return train_config.lr * jnp.power(train_config.lr_epoch_factor, exponent)
  return train_config.lr / (1.0 + train_config.lr_decay * step)


def split_groups(params: dict, groups) -> tuple[dict, dict]:
  """(the params of `groups`, the rest): only the first part is differentiated and optimized."""
  return ({g: v for g, v in params.items() if g in groups}, {g: v for g, v in params.items() if g not in groups})


def make_optimizer() -> optax.GradientTransformation:
  """Adam's direction only; the step scales it by the schedule, so a rewound round restarts the schedule at k."""
  return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)


def create_state(params, masks, step: int, tx, mesh, trained_groups=None) -> TrainState:
  """A fresh state: masked params and a fresh optimizer (over `trained_groups`, default all), replicated."""
  params = jax.tree.map(lambda p, m: np.where(m, p, 0).astype(p.dtype), jax.device_get(params), jax.device_get(masks))
  params = parallel.replicate(params, mesh)
  trained, _ = split_groups(params, params.keys() if trained_groups is None else trained_groups)
  # The same sharding as the step's outputs, or the second step would compile again.
  opt_state = jax.jit(tx.init, out_shardings=parallel.replicated(mesh))(trained)
  return TrainState(step=parallel.replicate(np.int32(step), mesh), params=params, opt_state=opt_state)


def make_train_step(model, train_config, tx, mesh) -> Callable:
  """Returns step(state, masks, vgg_params, batch, key) -> (state, metrics), compiled once for all rounds."""

  groups = model.trained_groups

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
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  replicated = parallel.replicated(mesh)
  return jax.jit(step_fn, donate_argnums=(0,), out_shardings=(replicated, replicated))


def train(step_fn, state, masks, vgg_params, batches: Iterator, end_step: int, key, mesh, *, log_every: int,
          label: str = "", on_step: Callable | None = None, log: Callable = print) -> TrainState:
  """Runs the step from state.step to end_step; the host syncs only at log intervals."""
  start = int(jax.device_get(state.step))
  last_t, last_step = time.perf_counter(), start
  for i in range(start, end_step):
    batch = parallel.shard_batch(next(batches), mesh)
    state, metrics = step_fn(state, masks, vgg_params, batch, key)
    if on_step is not None:
      on_step(i + 1, state)
    done = i + 1
    if done % log_every == 0 or done == end_step:
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      rate = (done - last_step) / max(now - last_t, 1e-9)
      eta = (end_step - done) / rate if rate > 0 else float("nan")
      log(f"{label} step {done}/{end_step}  loss {float(metrics['total']):.4f}  "
          f"(content {float(metrics['content']):.4f}, style {float(metrics['style']):.4f})  "
          f"{rate:.2f} steps/s  ETA {_fmt_seconds(eta)}")
      if not np.isfinite(float(metrics["total"])):
        from jaxtickets.errors import UserError

        raise UserError(f"The loss became non-finite at step {done} of {label.strip()}: lower config.train.lr, "
                        "or check the data and the VGG weights.")
      last_t, last_step = now, done
  return state


def _fmt_seconds(s: float) -> str:
  if not np.isfinite(s):
    return "?"
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
