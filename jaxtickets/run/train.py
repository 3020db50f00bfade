"""Training: the train state, optimizer and learning-rate schedule, the jitted packed train step, and the loop that
trains a pack of runs with it (`train_pack`).

A lottery-ticket study is mostly independent trainings: the replicates of a round, and every (branch, round,
replicate) of the baselines. The references train at batch 8, which data parallelism alone cannot spread over a
pod, so `train_pack` trains up to `Layout.runs_per_step` runs (layout.py) in one compiled step
(`make_packed_step`): runs over the mesh's 'runs' axis, each run's batch over 'data'. Every run keeps its own data
order, learning-rate position, checkpoint slot and ticket, so a packed run gives the ticket it gives alone.
`train_pack` returns what each run gave; its caller (imp.py) evaluates and saves it.
"""

import dataclasses
import functools
import time
import types
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxtickets import data, settings
from jaxtickets.core import early_bird as early_bird_lib, parallel, sparsity, streams
from jaxtickets.errors import UserError
from jaxtickets.run import monitor as monitor_lib, preempt
from jaxtickets.store import checkpoint, workdir as workdir_lib


# ----------------------------------------------------------------------------- the step


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


def learning_rate(train_settings, step):
  """The learning rate of (0-based) iteration `step`.

  'inverse':    lr / (1 + lr_decay * i) (AdaIN, SANet, MANet, MCCNet with 5e-5; LST's 1e-5 set after step k
                gives the same value for step k as this form before it).
  'epoch_step': lr * lr_epoch_factor ** max(0, epoch + 1 - lr_constant_epochs), epoch = i // epoch_steps
                (AdaAttN: constant for 2 epochs, then x0.3 per epoch).
  'cosine':     optax's cosine decay from lr to 0 over the round's `steps` iterations, after a linear warm-up of
                `warmup_steps` from 0: a round ends at the bottom of a descent, not at a random point of a walk.
  """
  schedule = train_settings.schedule
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_settings.lr, warmup_steps=train_settings.warmup_steps,
        decay_steps=max(train_settings.steps, train_settings.warmup_steps + 1), end_value=0.0)(step)
  if schedule == "epoch_step":
    epoch = jnp.floor_divide(step, train_settings.epoch_steps)
    exponent = jnp.maximum(0.0, epoch + 1.0 - train_settings.lr_constant_epochs)
    return train_settings.lr * jnp.power(train_settings.lr_epoch_factor, exponent)
  return train_settings.lr / (1.0 + train_settings.lr_decay * step)


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
  return state if mesh is None else parallel.put_replicated(state, mesh)


@functools.lru_cache(maxsize=8)
def optimizer_init(tx) -> Callable:
  """tx.init as one program per optimizer (run eagerly, it compiles an op per leaf shape)."""
  return jax.jit(tx.init)


# The settings.StepSettings fields a step reads (the schedule and the NaN policy); the rest (steps, logging...) do not
# change the compiled program.
STEP_FIELDS = ("schedule", "lr", "lr_decay", "epoch_steps", "lr_constant_epochs", "lr_epoch_factor", "nan_policy")
# The cosine schedule also reads the round's length; only it, so other schedules share a step across lengths.
COSINE_FIELDS = ("steps", "warmup_steps")


def step_settings(step) -> tuple:
  """The fields of settings.StepSettings `step` that the compiled step reads, as a hashable key, so equal settings
  share one traced and compiled step: every run of a process (rounds, baselines, a study's sub-runs, stability
  copies) reuses it instead of tracing again."""
  fields = STEP_FIELDS + (COSINE_FIELDS if step.schedule == "cosine" else ())
  return tuple((f, getattr(step, f)) for f in fields)


def make_packed_step(model, step, tx, mesh, runs_per_device: int = 1, vmap: bool = True) -> Callable:
  """step(state, masks, vgg_params, batch, keys, ends) -> (state, metrics) for a pack of independent runs.

  Every argument but vgg_params has a leading run axis, sharded over the mesh's 'runs' axis; each run's batch is
  also sharded over 'data' (XLA all-reduces its gradients there). A device with one run of the pack calls the
  plain step on it; several runs per device are vmapped, or with vmap=False traced one after the other into the
  same program (vmapped conv weights become grouped convolutions, which XLA's CPU backend runs slowly). A run whose step has reached its `ends` entry is
  left as it is (a padded slot, or a run resumed further than its pack-mates), so one compiled step serves every
  pack. Equal settings (model, step settings, optimizer, mesh, layout) return the same jitted function.
  """
  return _packed_step(model, step_settings(step), tx, mesh, runs_per_device, vmap)


@functools.lru_cache(maxsize=8)
def _packed_step(model, settings: tuple, tx, mesh, runs_per_device: int, vmap: bool) -> Callable:
  step_fn = masked_step(model, types.SimpleNamespace(**dict(settings)), tx)

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


def masked_step(model, train_settings, tx) -> Callable:
  """The un-jitted masked train step of one run: step(state, masks, vgg_params, batch, key) -> (state, metrics).

  A non-finite loss or gradient leaves params and optimizer state as they were (decided on device, no host sync)
  and records the step in state.first_bad; under nan_policy 'stop' every later step is a no-op too, so the host
  can stop at its next log or checkpoint interval with nothing non-finite in the state.
  """
  groups = model.trained_groups
  policy = train_settings.nan_policy

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
    lr = learning_rate(train_settings, state.step.astype(jnp.float32))
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


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class Compute:
  """What every run of a command computes with; built once (so the train step compiles once), never changed."""
  step: settings.StepSettings  # how each run trains
  data: settings.DataSpec  # what it trains on
  protocol: settings.Protocol  # rounds, branches, replicates, pruning
  model: Any  # a models.base.StyleModel
  vgg_params: Any  # the frozen loss VGG: on the host until placed, then replicated over the mesh
  prunable: Any  # bool tree of the params' structure: the kernels pruning may touch
  frozen_inference_size: int  # frozen VGG weights the stylizing network reads (a fixed encoder), never pruned
  mesh: jax.sharding.Mesh  # ('runs', 'data')
  layout: Any  # layout.Layout: how many runs train side by side
  tx: optax.GradientTransformation
  packed_step: Callable  # train.make_packed_step's
  eval_fn: Callable  # evaluate.make_eval_fn's
  pairs: dict  # the held-out pairs every ticket is scored on
  init_from: str = ""  # ported decoder/transform weights theta_0 starts from (settings.ModelSpec.init_from)


@dataclasses.dataclass(frozen=True)
class Output:
  """Where a command's work goes (its workdir, train-state checkpoints, TensorBoard, the log), and the watch that may
  stop it."""
  workdir: str
  skip_log: data.SkipLog  # unreadable images replaced so far
  watch: preempt.PreemptionWatch  # SIGTERM, Ctrl-C, a preemption notice
  keep_checkpoints: int  # train-state checkpoints kept (settings.Checkpointing)
  async_checkpoints: bool  # written in the background while training goes on
  log: Callable[[str], None] = print
  ckpts: checkpoint.TrainCheckpoints | None = None  # <workdir>/state, once opened (imp.with_run_state)
  monitor: monitor_lib.Monitor | None = None  # TensorBoard events (process 0 writes), once opened

  def save_skips(self) -> None:
    if jax.process_index() == 0 and len(self.skip_log):
      workdir_lib.save_skips(self.workdir, self.skip_log.summary())

  def close(self) -> None:
    if self.monitor is not None:
      self.monitor.close()
    if self.ckpts is not None:
      self.ckpts.close()  # a pending (async) checkpoint is complete before the process goes
    self.save_skips()


@dataclasses.dataclass(frozen=True)
class RunContext:
  """A command's run context (imp.setup builds it): what it computes with, and where its work goes."""
  compute: Compute
  output: Output


@dataclasses.dataclass
class Job:
  """One training run: a (branch, round, replicate) from its start weights and masks to its trained weights."""
  branch: str
  round: int
  replicate: Any  # imp.Replicate: index, seed
  init_params: Any  # host tree; the run starts from init_params * masks
  masks: Any  # host bool tree
  start_step: int
  keep_theta_at: int = 0  # the dense round saves its weights after this many steps (the rewind point), if > 0,
  theta_path: str = ""  # here, at once: a run resumed past that step could not make them again
  early_bird: early_bird_lib.Watch | None = None  # stop once the mask pruning would give has settled (dense round)

  @property
  def label(self) -> str:
    return f"[rep {self.replicate.index} {self.branch} round {self.round}]"

  @property
  def name(self) -> dict:
    """How checkpoints name the run."""
    return {"branch": self.branch, "round": self.round, "replicate": self.replicate.index}


@dataclasses.dataclass(frozen=True)
class Result:
  """What training one job gave."""
  params: Any  # the trained weights, on the host
  nan_skips: int  # batches skipped for a non-finite loss (nan_policy 'skip')
  end_step: int  # where training stopped: the round's steps, or the early-bird step
  early_bird_step: int | None = None  # the early-bird test's stop, None when the mask never settled
  early_bird_history: list | None = None  # [step, distance to the previous mask] per draw (with the test only)


def train_pack(ctx: RunContext, jobs: list[Job]) -> list[Result]:
  """Trains `jobs` (at most layout.runs_per_step) side by side to step.steps; one Result per job.

  Each run resumes from its own slot of the newest train-state checkpoint that holds it; every
  checkpoint.every_steps steps the whole pack is saved again; a preemption notice or Ctrl-C saves and raises
  preempt.Preempted. The checkpoints stay until the caller has saved the results (then output.ckpts.clear()). The
  host syncs only at log, checkpoint, rewind-point and early-bird steps.
  """
  c, out = ctx.compute, ctx.output
  step, mesh, n = c.step, c.mesh, c.layout.runs_per_step
  assert 0 < len(jobs) <= n, (len(jobs), n)
  states = _restore(ctx, jobs)
  steps = [int(st["step"]) for st in states]
  # A run whose mask had settled before its checkpoint is at its end; padded slots copy the first run and never
  # move (their end is their step), so one compiled step serves every pack.
  pad = n - len(jobs)
  ends = [steps[i] if job.early_bird is not None and job.early_bird.stop_step is not None else step.steps
          for i, job in enumerate(jobs)] + [steps[0]] * pad
  state = state_from_dict(parallel.put_runs(_stack(states + states[:1] * pad), mesh))
  masks = parallel.put_runs(_stack([job.masks for job in jobs + jobs[:1] * pad]), mesh)
  keys = parallel.put_runs(np.stack([np.asarray(streams.key(job.replicate.seed, streams.Stream.STEPS))
                                     for job in jobs + jobs[:1] * pad]), mesh)
  ends_device = parallel.put_runs(np.asarray(ends, np.int32), mesh)
  batches = _Batches(c, out.skip_log, jobs, steps)
  live = range(len(jobs))
  thetas = {i: job.theta_path for i, job in enumerate(jobs) if job.keep_theta_at and steps[i] <= job.keep_theta_at
            and not checkpoint.params_exist(job.theta_path)}
  rate = _Rate(max(steps[i] for i in live))

  while any(steps[i] < ends[i] for i in live):
    state, metrics = c.packed_step(state, masks, c.vgg_params, batches.next(steps, ends), keys, ends_device)
    steps = [min(x + 1, e) for x, e in zip(steps, ends)]
    done = max(steps[i] for i in live)
    keep = [i for i in thetas if steps[i] == jobs[i].keep_theta_at]
    birds = [i for i in live if jobs[i].early_bird is not None and steps[i] < ends[i]
             and jobs[i].early_bird.due(steps[i])]
    if keep or birds:
      _check_health(ctx, state, jobs)
      params = parallel.fetch(state.params)
      for i in keep:  # the rewind point theta_k, before anything can stop the round
        checkpoint.save_params(thetas.pop(i), _row(params, i))
      for i in [i for i in birds if jobs[i].early_bird.check(steps[i], _row(params, i))]:
        ends[i] = steps[i]
        ends_device = parallel.put_runs(np.asarray(ends, np.int32), mesh)
        out.log(f"{jobs[i].label} early bird: the mask settled (distance below {jobs[i].early_bird.epsilon} for "
                f"{jobs[i].early_bird.patience} checks); the dense round stops at step {steps[i]} of {step.steps}")
    finished = all(steps[i] >= ends[i] for i in live)
    at_log = done % step.log_every == 0 or finished
    at_save = done % step.checkpoint_every == 0 and not finished
    stopping = out.watch(done, at_log or at_save)
    if not (at_log or at_save or stopping):
      continue
    _check_health(ctx, state, jobs)
    if at_log:
      _log_steps(ctx, jobs, steps, ends, metrics, state.nan_skips, rate(done))
    if at_save or stopping:
      _save(ctx, jobs, steps, state, masks, done)
    if stopping:
      raise preempt.Preempted(done, jobs[0].label if len(jobs) == 1 else f"a pack of {len(jobs)} runs",
                              out.watch.reason or "a preemption notice", out.ckpts.latest())

  params, skips = parallel.fetch(state.params), parallel.fetch(state.nan_skips)
  return [Result(params=_row(params, i), nan_skips=int(skips[i]), end_step=ends[i],
                 early_bird_step=job.early_bird.stop_step if job.early_bird else None,
                 early_bird_history=job.early_bird.history if job.early_bird else None)
          for i, job in enumerate(jobs)]


def _restore(ctx: RunContext, jobs: list[Job]) -> list[dict]:
  """Each job's start state on the host: its slot of the newest train-state checkpoint that holds it (with its
  early-bird watch's state), or a fresh one (masked init, a fresh optimizer, its start step)."""
  c, out = ctx.compute, ctx.output
  states = [state_dict(create_state(job.init_params, job.masks, job.start_step, c.tx,
                                                        trained_groups=c.model.trained_groups)) for job in jobs]
  restored = out.ckpts.restore_runs([job.name for job in jobs], states[0], [job.masks for job in jobs])
  if not any(r is not None for r in restored):
    out.ckpts.clear()  # what is there belongs to runs whose tickets are saved, or to another config's runs
  for i, (job, got) in enumerate(zip(jobs, restored)):
    if got is not None:
      run = got.pop("run")
      states[i] = got
      if job.early_bird is not None:
        job.early_bird.restore(run.get("early_bird"), job.masks)
      out.log(f"{job.label} resuming at step {int(got['step'])} from its checkpoint in '{out.ckpts.directory}'")
  return states


class _Batches:
  """The pack's batches: this process's rows of each run it holds, element i of a run's dataset being its global
  step i; padded slots and finished runs that never read get a constant batch of the right shape."""

  def __init__(self, c: Compute, skip_log: data.SkipLog, jobs: list[Job], steps: list[int]):
    self.mesh = c.mesh
    self.runs, self.batch_size = c.layout.runs_per_step, c.step.batch_size
    self.rows = parallel.local_rows(self.mesh, self.runs, self.batch_size)
    self.iterators, self.last = {}, {}
    for slot, (lo, hi) in self.rows.items():
      if slot < len(jobs):
        width = hi - lo
        dataset = data.make_train_dataset(c.data, self.batch_size, lo // width, self.batch_size // width,
                                          skip_log=skip_log, order_seed=jobs[slot].replicate.seed)
        self.iterators[slot] = data.make_train_iterator(dataset, start_step=steps[slot],
                                                        num_threads=c.data.num_threads, prefetch=c.data.prefetch)
    lo, hi = next(iter(self.rows.values()))
    size = (hi - lo, c.data.crop_size, c.data.crop_size, 3)
    self.filler = {"content": np.full(size, 0.5, np.float32), "style": np.full(size, 0.5, np.float32)}

  def next(self, steps: list[int], ends: list[int]):
    """The packed batch of the next step: a run at its end keeps its last batch (the step leaves it as it is)."""
    for slot, iterator in self.iterators.items():
      if steps[slot] < ends[slot]:
        self.last[slot] = next(iterator)
    local = {slot: self.last.get(slot, self.filler) for slot in self.rows}
    return parallel.assemble_packed_batch(local, self.rows, self.runs, self.batch_size, self.mesh)


class _Rate:
  """Steps per second since the previous call."""

  def __init__(self, step: int):
    self.time, self.step = time.perf_counter(), step

  def __call__(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self.step) / max(now - self.time, 1e-9)
    self.time, self.step = now, step
    return rate


def _check_health(ctx: RunContext, state, jobs: list[Job]) -> None:
  """Under nan_policy 'stop', raises train.NonFiniteLoss for a run whose loss became non-finite (a host sync)."""
  if ctx.compute.step.nan_policy != "stop":
    return
  first_bad = parallel.fetch(state.first_bad)
  for i, job in enumerate(jobs):
    if first_bad[i] >= 0:
      raise non_finite_error(int(first_bad[i]), job.label, ctx.output.ckpts.latest())


def _log_steps(ctx: RunContext, jobs: list[Job], steps, ends, metrics, nan_skips, rate: float) -> None:
  """A line per run (step, losses, speed, ETA) and its TensorBoard scalars."""
  c, out = ctx.compute, ctx.output
  host, skips = parallel.fetch(metrics), parallel.fetch(nan_skips)
  done = max(steps[:len(jobs)])
  eta = (c.step.steps - done) / rate if rate > 0 else float("nan")
  names = (*c.model.terms, *c.model.extra_metrics)
  for i, job in enumerate(jobs):
    out.log(f"{job.label} step {steps[i]}/{ends[i]}  {_loss_line(host, i, names)}  {rate:.2f} steps/s  "
            f"ETA {fmt_seconds(eta)}" + (f"  [{int(skips[i])} non-finite batches skipped]" if skips[i] else "")
            + (f"  [{len(jobs)} runs side by side]" if len(jobs) > 1 and i == len(jobs) - 1 else ""))
    if out.monitor is not None:
      out.monitor.train_step(f"{job.branch}/rep_{job.replicate.index}", job.round, steps[i],
                             {k: v[i] for k, v in host.items()}, steps_per_sec=rate)


def _save(ctx: RunContext, jobs: list[Job], steps, state, masks, done: int) -> None:
  """The whole pack as the train-state checkpoint of step `done`; its meta names each slot's run, step, data
  position and early-bird state, so a run resumes from its slot however it is packed then."""
  runs = [dict(job.name, start_step=job.start_step, step=steps[i], data_iterator={"next_index": steps[i]},
               **({"early_bird": job.early_bird.state()} if job.early_bird else {})) for i, job in enumerate(jobs)]
  ctx.output.ckpts.save(done, state_dict(state), masks,
                        {"pack_size": ctx.compute.layout.runs_per_step, "runs": runs})
  ctx.output.save_skips()


def _stack(trees: list) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _row(tree, i: int) -> Any:
  return jax.tree.map(lambda x: np.asarray(x)[i], tree)


def fmt_seconds(s: float) -> str:
  if not np.isfinite(s):
    return "?"
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _loss_line(metrics: dict, row: int, names: tuple[str, ...]) -> str:
  """'loss T (content C, style S)': the total, then the model's own metrics `names` in their declared order."""
  parts = ", ".join(f"{k} {float(metrics[k][row]):.4f}" for k in names)
  return f"loss {float(metrics['total'][row]):.4f} ({parts})"
