"""Independent runs trained side by side: what they train with, how many per step, and the loop that trains a pack.

A lottery-ticket study is mostly independent trainings: the replicates of a round, and every (branch, round,
replicate) of the baselines. The references train at batch 8, which data parallelism alone cannot spread over a
pod, so `train` trains up to `Layout.runs_per_step` runs in one compiled step (train.make_packed_step): runs over
the mesh's 'runs' axis, each run's batch over 'data'. Every run keeps its own data order, learning-rate position,
checkpoint slot and ticket, so a packed run gives the ticket it gives alone. `train` returns what each run gave;
its caller evaluates and saves it.
"""

import dataclasses
import math
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax

from jaxtickets.core import aot, early_bird as early_bird_lib, parallel, streams, train as train_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets import config as config_lib, data
from jaxtickets.run import monitor as monitor_lib, preempt
from jaxtickets.errors import UserError


@dataclasses.dataclass(frozen=True)
class Layout:
  """`runs_per_step` runs per step, over a 'runs' mesh axis of `runs_axis` devices (the rest is 'data')."""
  runs_per_step: int
  runs_axis: int
  why: str = dataclasses.field(default="", compare=False)  # why auto packing left its first choice, if it did

  @property
  def runs_per_device(self) -> int:
    return self.runs_per_step // self.runs_axis


def choose_layout(config, concurrent: int, platform: str | None = None, devices=None, compile_layout=None,
                  memory_bytes: int | None = None) -> Layout:
  """The pack for this run on `devices` (default: every device) of `platform` (default: JAX's default backend).

  One run at a time without packing; else config.parallel.runs_per_step, or (0, auto) enough 'runs' devices for the
  `concurrent` runs a round has (its replicates), with data parallelism over the rest, and on accelerators several
  runs per device (vmapped). On CPU a device trains one run at a time: vmapped conv weights become grouped
  convolutions, which XLA's CPU backend runs slower than one run after the other.

  On an accelerator, given `compile_layout(runs_axis, runs_per_device) -> aot.Compiled` and a device's
  `memory_bytes`, the compiled step's peak sizes the pack: auto takes the most runs per device, up to the round's
  need, that fit aot.HEADROOM of the memory, and where not even one run fits (or its step does not compile for
  lack of a memory), splits each run's batch over more devices; a run that fits no layout, or an asked-for
  runs_per_step that does not fit, gets one sentence before anything trains.
  """
  n, batch = (jax.device_count() if devices is None else len(devices)), config.train.batch_size
  platform = platform or jax.default_backend()
  requested = config.parallel.runs_per_step if config.parallel.pack_runs else 1
  if requested == 1:
    layout = Layout(1, 1)
  elif requested > 1:
    layout = Layout(requested, max(config_lib.runs_axis_sizes(n, batch, requested)))
  else:
    sizes = config_lib.runs_axis_sizes(n, batch)
    axis = next((a for a in sizes if a >= concurrent), sizes[-1])
    per_device = 1 if platform == "cpu" else max(1, math.ceil(concurrent / axis))
    layout = Layout(axis * per_device, axis)
  if compile_layout is None or platform == "cpu" or not memory_bytes:
    return layout
  describe = (f"{config.model.name} at batch {batch}, {config.data.crop_size} px crops, "
              f"{config_lib.model_config(config).dtype}")
  fit = lambda axis, want: aot.fit_runs_per_device(want, lambda k: compile_layout(axis, k), memory_bytes, describe)[0]
  if requested >= 1:
    fits = fit(layout.runs_axis, layout.runs_per_device)
    if fits < layout.runs_per_device:
      raise UserError(f"config.parallel.runs_per_step = {requested} puts {layout.runs_per_device} runs of {describe} "
                      f"on each device, but only {fits} fit its memory: use 0 (auto) or at most "
                      f"{layout.runs_axis * fits}.")
    return layout
  # Auto: where one run does not fit a device, each run's batch over more devices (a smaller 'runs' axis) puts less
  # of it on each; a compile that outgrows a core's vector memory is fixed the same way.
  axes = [layout.runs_axis] + [a for a in reversed(config_lib.runs_axis_sizes(n, batch)) if a < layout.runs_axis]
  last, last_axis = None, None
  for axis in axes:
    try:
      runs = axis * fit(axis, max(1, math.ceil(concurrent / axis)))
    except aot.RunDoesNotFit as e:
      if len(axes) == 1:
        raise
      last, last_axis = e, axis
      continue
    why = (f"with each run's batch over {n // last_axis} device(s), one run did not fit: {last.reason}"
           if last is not None else "")
    return Layout(runs, axis, why=why)
  raise UserError(f"One run of {describe} fits no layout of the {n} devices (each run's batch over "
                  f"{', '.join(str(n // a) for a in axes)} of them; with the most: {last.reason}): lower "
                  "config.train.batch_size or config.data.crop_size, or train in bfloat16 (config.train.dtype).")


@dataclasses.dataclass(frozen=True)
class Compute:
  """What every run of a command computes with; built once (so the train step compiles once), never changed."""
  config: ml_collections.ConfigDict
  model: Any  # a models.base.StyleModel
  vgg_params: Any  # the frozen loss VGG: on the host until placed, then replicated over the mesh
  prunable: Any  # bool tree of the params' structure: the kernels pruning may touch
  frozen_inference_size: int  # frozen VGG weights the stylizing network reads (a fixed encoder), never pruned
  mesh: jax.sharding.Mesh  # ('runs', 'data')
  layout: Layout  # how many runs train side by side
  tx: optax.GradientTransformation
  packed_step: Callable  # train.make_packed_step's
  eval_fn: Callable  # evaluate.make_eval_fn's
  pairs: dict  # the held-out pairs every ticket is scored on


@dataclasses.dataclass(frozen=True)
class Output:
  """Where a command's work goes (its workdir, train-state checkpoints, TensorBoard, the log), and the watch that may
  stop it."""
  workdir: str
  skip_log: data.SkipLog  # unreadable images replaced so far
  watch: preempt.PreemptionWatch  # SIGTERM, Ctrl-C, a preemption notice
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
  end_step: int  # where training stopped: config.train.steps, or the early-bird step
  early_bird_step: int | None = None  # the early-bird test's stop, None when the mask never settled
  early_bird_history: list | None = None  # [step, distance to the previous mask] per draw (with the test only)


def train(ctx: RunContext, jobs: list[Job]) -> list[Result]:
  """Trains `jobs` (at most layout.runs_per_step) side by side to config.train.steps; one Result per job.

  Each run resumes from its own slot of the newest train-state checkpoint that holds it; every
  checkpoint.every_steps steps the whole pack is saved again; a preemption notice or Ctrl-C saves and raises
  preempt.Preempted. The checkpoints stay until the caller has saved the results (then output.ckpts.clear()). The
  host syncs only at log, checkpoint, rewind-point and early-bird steps.
  """
  c, out = ctx.compute, ctx.output
  cfg, mesh, n = c.config, c.mesh, c.layout.runs_per_step
  assert 0 < len(jobs) <= n, (len(jobs), n)
  states = _restore(ctx, jobs)
  steps = [int(st["step"]) for st in states]
  # A run whose mask had settled before its checkpoint is at its end; padded slots copy the first run and never
  # move (their end is their step), so one compiled step serves every pack.
  pad = n - len(jobs)
  ends = [steps[i] if job.early_bird is not None and job.early_bird.stop_step is not None else cfg.train.steps
          for i, job in enumerate(jobs)] + [steps[0]] * pad
  state = train_lib.state_from_dict(parallel.put_runs(_stack(states + states[:1] * pad), mesh))
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
                f"{jobs[i].early_bird.patience} checks); the dense round stops at step {steps[i]} of {cfg.train.steps}")
    finished = all(steps[i] >= ends[i] for i in live)
    at_log = done % cfg.train.log_every == 0 or finished
    at_save = done % cfg.checkpoint.every_steps == 0 and not finished
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
  states = [train_lib.state_dict(train_lib.create_state(job.init_params, job.masks, job.start_step, c.tx,
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
    cfg, self.mesh = c.config, c.mesh
    self.runs, self.batch_size = c.layout.runs_per_step, cfg.train.batch_size
    self.rows = parallel.local_rows(self.mesh, self.runs, self.batch_size)
    self.iterators, self.last = {}, {}
    for slot, (lo, hi) in self.rows.items():
      if slot < len(jobs):
        width = hi - lo
        dataset = data.make_train_dataset(cfg, self.batch_size, lo // width, self.batch_size // width,
                                          skip_log=skip_log, order_seed=jobs[slot].replicate.seed)
        self.iterators[slot] = data.make_train_iterator(dataset, start_step=steps[slot],
                                                        num_threads=cfg.data.num_threads, prefetch=cfg.data.prefetch)
    lo, hi = next(iter(self.rows.values()))
    size = (hi - lo, cfg.data.crop_size, cfg.data.crop_size, 3)
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
  if ctx.compute.config.train.nan_policy != "stop":
    return
  first_bad = parallel.fetch(state.first_bad)
  for i, job in enumerate(jobs):
    if first_bad[i] >= 0:
      raise train_lib.non_finite_error(int(first_bad[i]), job.label, ctx.output.ckpts.latest())


def _log_steps(ctx: RunContext, jobs: list[Job], steps, ends, metrics, nan_skips, rate: float) -> None:
  """A line per run (step, losses, speed, ETA) and its TensorBoard scalars."""
  c, out = ctx.compute, ctx.output
  host, skips = parallel.fetch(metrics), parallel.fetch(nan_skips)
  done = max(steps[:len(jobs)])
  eta = (c.config.train.steps - done) / rate if rate > 0 else float("nan")
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
  ctx.output.ckpts.save(done, train_lib.state_dict(state), masks,
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
