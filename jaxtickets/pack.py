"""Independent runs trained side by side: how many per step, and the straight-line loop that trains a pack.

A lottery-ticket study is mostly independent trainings: the replicates of a round, and every (branch, round,
replicate) of the baselines. The references train at batch 8, which data parallelism alone cannot spread over a
pod, so `train_pack` trains up to `Layout.runs_per_step` runs in one compiled step (train.make_packed_step): runs
over the mesh's 'runs' axis, each run's batch over 'data'. Every run keeps its own data order, learning-rate
position, checkpoint slot and ticket, so a packed run gives the ticket it gives alone.
"""

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np

from jaxtickets import checkpoint, data, parallel, preempt, train, workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Layout:
  """`runs_per_step` runs per step, over a 'runs' mesh axis of `runs_axis` devices (the rest is 'data')."""
  runs_per_step: int
  runs_axis: int

  @property
  def runs_per_device(self) -> int:
    return self.runs_per_step // self.runs_axis


def choose_layout(config, concurrent: int, platform: str | None = None) -> Layout:
  """The pack for this run: one run at a time without packing; else config.parallel.runs_per_step, or (0, auto)
  enough 'runs' devices for the `concurrent` runs a round has (its replicates), with data parallelism over the
  rest, and on accelerators several runs per device (vmapped). On CPU a device trains one run at a time: vmapped
  conv weights become grouped convolutions, which XLA's CPU backend runs slower than one run after the other."""
  n, batch = jax.device_count(), config.train.batch_size
  requested = config.parallel.runs_per_step if config.parallel.pack_runs else 1
  if requested == 1:
    return Layout(1, 1)
  if requested > 1:
    return Layout(requested, max(parallel.runs_axis_sizes(n, batch, requested)))
  sizes = parallel.runs_axis_sizes(n, batch)
  axis = next((a for a in sizes if a >= concurrent), sizes[-1])
  platform = platform or jax.default_backend()
  per_device = 1 if platform == "cpu" else max(1, math.ceil(concurrent / axis))
  return Layout(axis * per_device, axis)


@dataclasses.dataclass
class Job:
  """One training run: a (branch, round, replicate) from its start weights and masks to its ticket."""
  branch: str
  round: int
  replicate: Any  # imp.Replicate: index, seed, key
  init_params: Any  # host tree; the run starts from init_params * masks
  masks: Any  # host bool tree
  start_step: int
  keep_theta_at: int = 0  # the dense round saves the weights after this many steps (the rewind point), if > 0
  early_bird: Any = None  # early_bird.Watch: stop once the mask pruning would give has settled (dense round)

  @property
  def label(self) -> str:
    return f"[rep {self.replicate.index} {self.branch} round {self.round}]"

  @property
  def name(self) -> dict:
    """How checkpoints name the run."""
    return {"branch": self.branch, "round": self.round, "replicate": self.replicate.index}


def _fresh_state(s, job: Job) -> dict:
  """A run's start state on the host: masked params, a fresh optimizer, the step it starts at."""
  params = jax.tree.map(lambda p, m: np.where(m, p, 0).astype(p.dtype), job.init_params, job.masks)
  trained, _ = train.split_groups(params, s.model.trained_groups)
  opt_state = jax.device_get(train.optimizer_init(s.tx)(trained))
  return {"step": np.int32(job.start_step), "params": params, "opt_state": opt_state, "nan_skips": np.int32(0),
          "first_bad": np.int32(-1)}


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


def train_pack(s, jobs: list[Job], finish) -> None:
  """Trains `jobs` (at most s.layout.runs_per_step) side by side to config.train.steps, then calls
  finish(job, trained_params, nan_skips) for each.

  Each run resumes from its own slot of the newest train-state checkpoint that holds it; every
  checkpoint.every_steps steps the whole pack is saved again; a preemption notice or Ctrl-C saves and raises
  preempt.Preempted. The host syncs only at log, checkpoint and rewind points.
  """
  cfg, layout, mesh = s.config, s.layout, s.mesh
  n, end, batch_size = layout.runs_per_step, cfg.train.steps, cfg.train.batch_size
  assert 0 < len(jobs) <= n, (len(jobs), n)
  states = [_fresh_state(s, job) for job in jobs]
  restored = s.ckpts.restore_runs([job.name for job in jobs], states[0], [job.masks for job in jobs])
  if not any(r is not None for r in restored):
    s.ckpts.clear()  # what is there belongs to runs whose tickets are saved, or to another config's runs
  for i, (job, got) in enumerate(zip(jobs, restored)):
    if got is not None:
      run = got.pop("run")
      states[i] = got
      if job.early_bird is not None:
        job.early_bird.restore(run.get("early_bird"), job.masks)
      s.log(f"{job.label} resuming at step {int(got['step'])} from its checkpoint in '{s.ckpts.directory}'")
  steps = [int(st["step"]) for st in states]
  # Padded slots copy the first run and never move (their end is their step), so one compiled step serves all.
  pad = n - len(jobs)
  ends = [end] * len(jobs) + [steps[0]] * pad
  for i, job in enumerate(jobs):
    if job.early_bird is not None and job.early_bird.stop_step is not None:
      ends[i] = steps[i]  # its mask had settled before the checkpoint
  state = train.state_from_dict(parallel.put_runs(_stack(states + [states[0]] * pad), mesh))
  masks = parallel.put_runs(_stack([job.masks for job in jobs] + [jobs[0].masks] * pad), mesh)
  keys = parallel.put_runs(np.stack([np.asarray(jax.random.fold_in(job.replicate.key, 3)) for job in jobs]
                                    + [np.asarray(jax.random.fold_in(jobs[0].replicate.key, 3))] * pad), mesh)
  ends_device = parallel.put_runs(np.asarray(ends, np.int32), mesh)

  # This process loads only its rows of only the runs it holds; element i of a run's dataset is its global step i.
  rows = parallel.local_rows(mesh, n, batch_size)
  iterators, filler = {}, None
  for slot, (lo, hi) in rows.items():
    if slot < len(jobs):
      width = hi - lo
      dataset = data.make_train_dataset(cfg, batch_size, lo // width, batch_size // width, skip_log=s.skip_log,
                                        order_seed=jobs[slot].replicate.seed)
      iterators[slot] = data.make_train_iterator(dataset, start_step=steps[slot], num_threads=cfg.data.num_threads,
                                                 prefetch=cfg.data.prefetch)
  last = {}

  def next_batches() -> dict:
    nonlocal filler
    for slot in rows:
      if slot in iterators and steps[slot] < ends[slot]:
        last[slot] = next(iterators[slot])
    if len(last) < len(rows):  # padded slots, and finished runs never read before: any batch of the right shape
      if filler is None:
        lo, hi = next(iter(rows.values()))
        size = (hi - lo, cfg.data.crop_size, cfg.data.crop_size, 3)
        filler = {"content": np.full(size, 0.5, np.float32), "style": np.full(size, 0.5, np.float32)}
      for slot in rows:
        last.setdefault(slot, filler)
    return parallel.assemble_packed_batch(last, rows, n, batch_size, mesh)

  live = range(len(jobs))
  policy = cfg.train.nan_policy
  theta_paths = {i: workdir_lib.theta_dir(s.workdir, job.replicate.index, job.keep_theta_at)
                 for i, job in enumerate(jobs) if job.keep_theta_at and steps[i] <= job.keep_theta_at}
  theta_paths = {i: p for i, p in theta_paths.items() if not checkpoint.params_exist(p)}
  last_t, last_step = time.perf_counter(), max(steps[i] for i in live)

  def check_health(st):
    if policy != "stop":
      return
    first_bad = parallel.fetch(st.first_bad)
    for i in live:
      if first_bad[i] >= 0:
        raise train.non_finite_error(int(first_bad[i]), jobs[i].label, s.ckpts.latest())

  while any(steps[i] < ends[i] for i in live):
    state, metrics = s.packed_step(state, masks, s.vgg_params, next_batches(), keys, ends_device)
    steps = [min(x + 1, e) for x, e in zip(steps, ends)]
    done = max(steps[i] for i in live)
    for i in [i for i in theta_paths if steps[i] == jobs[i].keep_theta_at]:  # the rewind point theta_k
      check_health(state)
      checkpoint.save_params(theta_paths.pop(i), _row(parallel.fetch(state.params), i))
    birds = [i for i in live if jobs[i].early_bird is not None and steps[i] < ends[i]
             and jobs[i].early_bird.due(steps[i])]
    if birds:
      check_health(state)
      params = parallel.fetch(state.params)
      for i in birds:
        if jobs[i].early_bird.check(steps[i], _row(params, i)):
          ends[i] = steps[i]
          ends_device = parallel.put_runs(np.asarray(ends, np.int32), mesh)
          s.log(f"{jobs[i].label} early bird: the mask settled (distance below "
                f"{jobs[i].early_bird.epsilon} for {jobs[i].early_bird.patience} checks); the dense round stops at "
                f"step {steps[i]} of {end}")
    finished = all(steps[i] >= ends[i] for i in live)
    at_log = done % cfg.train.log_every == 0 or finished
    at_save = done % cfg.checkpoint.every_steps == 0 and not finished
    stopping = s.watch(done, at_log or at_save)
    if not (at_log or at_save or stopping):
      continue
    check_health(state)
    if at_log:
      host = parallel.fetch(metrics)
      skips = parallel.fetch(state.nan_skips)
      now = time.perf_counter()
      rate = (done - last_step) / max(now - last_t, 1e-9)
      eta = (end - done) / rate if rate > 0 else float("nan")
      names = (*s.model.terms, *s.model.extra_metrics)
      for i in live:
        s.log(f"{jobs[i].label} step {steps[i]}/{ends[i]}  {_loss_line(host, i, names)}  {rate:.2f} steps/s  "
              f"ETA {fmt_seconds(eta)}" + (f"  [{int(skips[i])} non-finite batches skipped]" if skips[i] else "")
              + (f"  [{len(jobs)} runs side by side]" if len(jobs) > 1 and i == live[-1] else ""))
        if s.monitor is not None:
          s.monitor.train_step(f"{jobs[i].branch}/rep_{jobs[i].replicate.index}", jobs[i].round, steps[i],
                               {k: v[i] for k, v in host.items()}, steps_per_sec=rate)
      last_t, last_step = now, done
    if at_save or stopping:
      meta = {"pack_size": n, "runs": [dict(job.name, start_step=job.start_step, step=steps[i],
                                            data_iterator={"next_index": steps[i]},
                                            **({"early_bird": job.early_bird.state()} if job.early_bird else {}))
                                       for i, job in enumerate(jobs)]}
      s.ckpts.save(done, train.state_dict(state), masks, meta)
      s.save_skips()
    if stopping:
      where = s.ckpts.latest()
      raise preempt.Preempted(done, jobs[0].label if len(jobs) == 1 else f"a pack of {len(jobs)} runs",
                              s.watch.reason or "a preemption notice", where)

  trained = parallel.fetch(state.params)
  skips = parallel.fetch(state.nan_skips)
  for i, job in enumerate(jobs):
    finish(job, _row(trained, i), int(skips[i]))
  s.ckpts.clear()  # the tickets supersede the pack's train-state checkpoints
