"""Iterative magnitude pruning with rewinding: rounds, branches, the matching decision, the results table.

  round 0: train the dense network from theta_0, keeping theta_k (the rewind point) on the way
  round r: prune 20% of the surviving weights of round r-1's trained network, rewind to theta_k * mask,
           reset the optimizer and the schedule (to step k), train again
  branches beside IMP, from the same theta_k and IMP's round-r sparsity:
           random_prune (random positions, IMP's per-layer counts), random_reinit (IMP's masks, a fresh init),
           oneshot (prune the dense network straight to round r's sparsity, by config.sparsity.method)
  replicates: all of the above again for r = 1 .. imp.replicates - 1 with seed + r (init, data order, random masks);
           results.py turns the replicates' tickets into intervals and verdicts
"""

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from jaxtickets import (checkpoint, config as config_lib, data, early_bird, evaluate, pack, parallel, preempt, results,
                        sparsity, train, weights, workdir as workdir_lib)
from jaxtickets.errors import UserError
from jaxtickets.models import get_model


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every round shares; built once (so the train step compiles once for the whole run) and never changed."""
  config: Any
  workdir: str
  model: Any
  vgg_params: Any  # frozen loss VGG, replicated
  prunable: Any
  mesh: Any  # ('runs', 'data')
  layout: pack.Layout  # how many runs train side by side
  tx: Any
  packed_step: Callable
  eval_fn: Callable
  pairs: dict
  root_key: Any  # config.seed's: the random stand-in VGG is the same for every replicate, as pretrained weights are
  frozen_inference_size: int  # frozen VGG weights the stylizing network reads (a fixed encoder), never pruned
  skip_log: Any  # data.SkipLog: unreadable images replaced so far
  ckpts: Any = None  # checkpoint.TrainCheckpoints in <workdir>/state
  watch: Any = None  # preempt.PreemptionWatch: SIGTERM, Ctrl-C, preemption notice
  monitor: Any = None  # monitor.Monitor: TensorBoard events (process 0 writes)
  log: Callable = print

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
class Replicate:
  """One replicate: its index and seed (config.seed + index), which fix its init, data order and random masks."""
  index: int
  seed: int
  key: Any


def replicate(s: "Setup", index: int) -> Replicate:
  seed = s.config.seed + index
  return Replicate(index=index, seed=seed, key=jax.random.PRNGKey(seed))


def run(config, workdir: str, *, allow_config_change: bool = False) -> list[dict]:
  """Runs every configured branch and round and returns the results rows.

  Re-running on the same workdir resumes: finished rounds are loaded, running ones continue from their last
  train-state checkpoint. SIGTERM or Ctrl-C saves a checkpoint and raises preempt.Preempted. In a multi-process
  run a problem one process finds while preparing stops every process with that process's sentence.
  """
  lock = None
  try:
    with preempt.PreemptionWatch() as watch:
      def prepare() -> Setup:
        nonlocal lock
        config_lib.validate(config)
        lock = workdir_lib.lock_workdir(config, workdir, log)
        workdir_lib.check_resume_config(config, workdir, allow_config_change, log)
        return setup(config, workdir, watch=watch, place=False)

      s = with_run_state(parallel.agree(prepare))
      try:
        return _run_rounds(s)
      finally:
        s.close()
  finally:
    if lock is not None:
      lock.release()


def with_run_state(s: Setup) -> Setup:
  """`s` with the loss VGG on the devices, the workdir's train-state checkpoints, TensorBoard monitor and record of
  skipped images (the first collective steps of a multi-process run: after parallel.agree)."""
  from jaxtickets.monitor import Monitor

  if not isinstance(jax.tree.leaves(s.vgg_params)[0], jax.Array):
    s = dataclasses.replace(s, vgg_params=parallel.replicate(s.vgg_params, s.mesh))
  s.skip_log.merge(workdir_lib.load_skips(s.workdir))
  ckpts = checkpoint.TrainCheckpoints(workdir_lib.state_dir(s.workdir), keep=s.config.checkpoint.keep,
                                      async_save=s.config.checkpoint.async_save, log=log)
  return dataclasses.replace(s, ckpts=ckpts, monitor=Monitor(s.workdir))


def _run_rounds(s: Setup) -> list[dict]:
  """Every replicate's IMP rounds and baselines, then the results tables and the verdicts.

  Unpacked, replicate after replicate (IMP's rounds, then its baselines), as one run at a time always went.
  Packed, the replicates' IMP rounds side by side (rounds are sequential within a replicate), then every
  (branch, round, replicate) of the baselines as one queue that fills packs.
  """
  reps = [replicate(s, i) for i in range(s.config.imp.replicates)]
  for group in ([[rep] for rep in reps] if s.layout.runs_per_step == 1 else [reps]):
    imp_tickets = _imp_rounds(s, group)
    _train_jobs(s, _baseline_jobs(s, group, imp_tickets))
  rows, summary = results.write_results(s.workdir, s.config, skips=s.skip_log.summary())
  s.log(results.format_summary(summary))
  s.log(skipped_line(s.skip_log.summary()))
  for line in results.matching_lines(summary, s.config.imp.match_tolerance):
    s.log(line)
  return rows


def _imp_rounds(s: Setup, reps: list[Replicate]) -> dict[int, list[checkpoint.Ticket]]:
  """The dense round and IMP's rounds of `reps`, round by round, the replicates of a round side by side."""
  config, k = s.config, s.config.imp.rewind_step
  theta_0 = {rep.index: initial_params(s, rep) for rep in reps}
  jobs = [pack.Job("imp", 0, rep, theta_0[rep.index], sparsity.ones_masks(theta_0[rep.index]), start_step=0,
                   keep_theta_at=k, early_bird=early_bird_watch(s, theta_0[rep.index])) for rep in reps]
  tickets = {rep.index: [t] for rep, t in zip(reps, _train_jobs(s, jobs))}
  going = list(reps)
  for r in range(1, config.imp.rounds + 1):
    jobs = []
    for rep in going:
      prev = tickets[rep.index][-1]
      masks = sparsity.prune(config, prev.trained_params, prev.masks, s.prunable)
      jobs.append(pack.Job("imp", r, rep, rewind_params(s, rep, theta_0[rep.index]), masks, start_step=k))
    for rep, ticket in zip(going, _train_jobs(s, jobs)):
      tickets[rep.index].append(ticket)
    if config.imp.target_sparsity:
      for rep in list(going):
        reached = tickets[rep.index][-1].sparsity["prunable"]["sparsity"]
        if reached >= config.imp.target_sparsity:
          s.log(f"[rep {rep.index}] reached the target sparsity {config.imp.target_sparsity:.4f} at round {r} "
                f"({reached:.4f}).")
          going.remove(rep)
    if not going:
      break
  return tickets


def early_bird_watch(s: Setup, params):
  """The dense round's early-bird test (config.imp.early_bird), or None: masks drawn as round 1 would prune them,
  or straight to imp.target_sparsity when that is set."""
  i = s.config.imp
  if not i.early_bird:
    return None
  ones = sparsity.ones_masks(params)
  if i.target_sparsity:
    method = "lamp" if s.config.sparsity.method == "lamp" else "global"
    draw = lambda p: sparsity.prune_to_sparsity(p, s.prunable, i.target_sparsity, layer_cap=s.config.sparsity.layer_cap,
                                                method=method)
  else:
    draw = lambda p: sparsity.prune(s.config, p, ones, s.prunable)
  return early_bird.Watch(every=i.early_bird_every, epsilon=i.early_bird_epsilon, patience=i.early_bird_patience,
                          draw=draw, prunable=s.prunable, min_step=i.rewind_step)


def rewind_params(s: Setup, rep: Replicate, theta_0):
  """theta_k, the weights a pruned round rewinds to (theta_0 when k = 0)."""
  k = s.config.imp.rewind_step
  return theta_0 if k == 0 else checkpoint.load_params(workdir_lib.theta_dir(s.workdir, rep.index, k))


def _baseline_jobs(s: Setup, reps: list[Replicate], imp_tickets: dict) -> list[pack.Job]:
  """Every (branch, round, replicate) beside IMP, from the same theta_k and IMP's round-r sparsity."""
  config, k = s.config, s.config.imp.rewind_step
  jobs = []
  for rep in reps:
    dense, tickets = imp_tickets[rep.index][0], imp_tickets[rep.index][1:]
    theta_k = rewind_params(s, rep, dense.rewind_params)
    reinit = None
    for branch in config_lib.branches(config)[1:]:
      for r, imp_ticket in enumerate(tickets, start=1):
        init = theta_k
        if branch == "random_prune":
          masks = sparsity.random_prune_like(imp_ticket.masks, s.prunable, seed=(config.seed + rep.index) * 1009 + r)
        elif branch == "random_reinit":
          if reinit is None:  # every trained group re-drawn (a trained encoder too); frozen groups keep theta_k
            reinit = jax.device_get(s.model.reinit(jax.random.fold_in(rep.key, 2), jax.device_get(s.vgg_params),
                                                   theta_k))
          masks, init = imp_ticket.masks, reinit
        else:  # oneshot: the dense round's trained weights pruned at once, the way IMP prunes
          masks = sparsity.oneshot_masks(config, dense.trained_params, imp_ticket.masks, s.prunable)
        jobs.append(pack.Job(branch, r, rep, init, masks, start_step=k))
  return jobs


def _train_jobs(s: Setup, jobs: list[pack.Job]) -> list[checkpoint.Ticket]:
  """The jobs' tickets: saved ones loaded, the others trained in packs of s.layout.runs_per_step, in order."""
  tickets: dict[int, checkpoint.Ticket] = {}
  todo = []
  for i, job in enumerate(jobs):
    path = workdir_lib.ticket_dir(s.workdir, job.branch, job.round, job.replicate.index)
    if checkpoint.ticket_exists(path):
      s.log(f"{job.label} already done, loading {path}")
      tickets[i] = checkpoint.load_ticket(path)
    else:
      todo.append(i)
  n = s.layout.runs_per_step
  for start in range(0, len(todo), n):
    chunk = todo[start:start + n]
    for i in chunk:
      _announce(s, jobs[i])

    def finish(job, trained, nan_skips, chunk=chunk):
      tickets[chunk[[jobs[i] for i in chunk].index(job)]] = _finish_run(s, job, trained, nan_skips)

    pack.train_pack(s, [jobs[i] for i in chunk], finish)
  return [tickets[i] for i in range(len(jobs))]


def _announce(s: Setup, job: pack.Job) -> None:
  report = sparsity_report(s, job.masks, job.init_params)
  s.log(f"{job.label} sparsity {report['prunable']['sparsity']:.4f} of prunable weights, "
        f"{report['inference']['sparsity']:.4f} of the inference network; training steps "
        f"{job.start_step}..{s.config.train.steps}")
  collapsed = sparsity.collapsed_layers(report)
  if collapsed and job.branch in ("imp", "oneshot"):
    s.log(f"WARNING: {job.label} layer collapse: {', '.join(collapsed)} above 99% sparsity (global pruning empties a "
          "layer first when its weights are smallest); config.sparsity.layer_cap (e.g. 0.95) stops it.")


def _finish_run(s: Setup, job: pack.Job, trained, nan_skips: int) -> checkpoint.Ticket:
  """Evaluates a trained run on the held-out pairs and saves its ticket (and refreshes the results tables)."""
  cfg, rep = s.config, job.replicate
  path = workdir_lib.ticket_dir(s.workdir, job.branch, job.round, rep.index)
  report = sparsity_report(s, job.masks, job.init_params)
  metrics = evaluate.evaluate(s.eval_fn, jax.device_put(trained), jax.device_put(job.masks), s.vgg_params, s.pairs,
                              cfg.eval.batch_size)
  dense_total = metrics["total"] if job.round == 0 else _dense_total(s.workdir, rep.index)
  bird = job.early_bird
  end = bird.stop_step if bird is not None and bird.stop_step is not None else cfg.train.steps
  # The model's names travel with the ticket, so the results tables need no model to read it.
  metrics.update(branch=job.branch, round=job.round, replicate=rep.index, steps=end - job.start_step,
                 rewind_step=cfg.imp.rewind_step, relative_to_dense=metrics["total"] / dense_total - 1.0,
                 nan_skips=nan_skips, terms=list(s.model.terms), extra_metrics=list(s.model.extra_metrics))
  if bird is not None:
    metrics.update(early_bird_step=bird.stop_step, early_bird_history=bird.history)
  tag = f"{job.branch}/rep_{rep.index}"
  if s.monitor is not None and s.monitor.enabled:
    sample = {k: s.pairs[k][:4] for k in ("content", "style")}
    images = evaluate.stylize_pairs(s.model, trained, job.masks, jax.device_get(s.vgg_params), sample)
    scalars = {k: v for k, v in metrics.items() if k not in ("per_pair", "pair_names")}
    s.monitor.round_end(tag, job.round, scalars, report, images)
  named = ", ".join(f"{k} {metrics[k]:.4f}" for k in (*s.model.terms, *s.model.extra_metrics))
  s.log(f"{job.label} eval: total {metrics['total']:.4f} ({named}) on {len(s.pairs['content'])} pairs, "
        f"{metrics['relative_to_dense']:+.2%} vs "
        "this replicate's dense round (the verdicts come from all replicates at the end); content reconstructed "
        f"with itself as the style: {metrics[evaluate.RECON_PSNR]:.2f} dB PSNR "
        f"(a flat mean-colour image: {metrics[evaluate.FLAT_PSNR]:.2f} dB)")
  if job.round == 0 and metrics[evaluate.RECON_PSNR] < metrics[evaluate.FLAT_PSNR] + results.LEARNED_MARGIN_DB:
    s.log(f"WARNING: {job.label} the dense network reconstructs its held-out content less than "
          f"{results.LEARNED_MARGIN_DB:.0f} dB better than a flat mean-colour image: it has not learned the task, so "
          "verdicts about its tickets say little about style transfer (train longer, or see docs/study_cpu).")
  checkpoint.save_ticket(path, masks=job.masks, rewind_params=job.init_params, trained_params=trained,
                         metrics=metrics, sparsity=report)
  results.write_results(s.workdir, cfg, skips=s.skip_log.summary())
  return checkpoint.Ticket(path=path, masks=job.masks, rewind_params=job.init_params, trained_params=trained,
                           metrics=metrics, sparsity=report)


def skipped_line(summary: dict) -> str:
  """The run-summary line about unreadable images."""
  if not summary or not summary.get("count"):
    return "Data: no unreadable images were skipped."
  first = ", ".join(summary["first"][:3])
  more = ", ..." if summary["count"] > 3 else ""
  return (f"Data: skipped {summary['count']} unreadable images, each replaced by the next readable one "
          f"({first}{more}); the list is in summary.json.")


def setup(config, workdir: str, *, watch=None, place: bool = True) -> Setup:
  """Builds the model, loss VGG, masks' scope, eval pairs, the pack layout and mesh, and the compiled functions.

  With place=False the loss VGG stays in host memory: nothing here is collective then, so a multi-process run can
  agree on problems first (with_run_state places it).
  """
  model = get_model(config.model.name)(config_lib.model_config(config))
  root_key = jax.random.PRNGKey(config.seed)
  vgg_params = weights.load_or_init_vgg(model, config.model.vgg_weights, jax.random.fold_in(root_key, 1))
  layout = pack.choose_layout(config, concurrent=config.imp.replicates)
  mesh = parallel.make_mesh(layout.runs_axis)
  tx = train.make_optimizer(config.train.adam_eps)
  shapes = jax.eval_shape(model.init, root_key, vgg_params)
  prunable = sparsity.prunable_leaves(shapes, config_lib.split_list(config.sparsity.scope), allow_missing_groups=True)
  # Frozen groups (e.g. LST's pre-trained decoder) are never pruned: they are not trained to recover.
  prunable = {g: jax.tree.map(lambda p, g=g: p and g in model.trained_groups, sub) for g, sub in prunable.items()}
  if not any(jax.tree.leaves(prunable)):
    raise UserError(f"config.sparsity.scope = {config.sparsity.scope!r} selects no trained kernel of {model.name} "
                    f"(trained groups: {', '.join(model.trained_groups)}): add a trained group to the scope.")
  skip_log = data.SkipLog(log)
  pairs = data.eval_pairs(config, skip_log=skip_log)
  frozen = 0 if model.train_encoder else sum(int(np.size(a)) for a in jax.tree.leaves(
      model.encoder_params(None, vgg_params)))
  if layout.runs_per_step > 1:
    log(f"Packing: up to {layout.runs_per_step} runs side by side per step ({layout.runs_axis} on the mesh's 'runs' "
        f"axis x {layout.runs_per_device} per device, each run's batch over {mesh.shape[parallel.DATA_AXIS]} "
        "device(s)); config.parallel.pack_runs=false trains one run at a time.")
  return Setup(config=config, workdir=workdir, model=model,
               vgg_params=parallel.replicate(vgg_params, mesh) if place else vgg_params,
               prunable=prunable, mesh=mesh, layout=layout, tx=tx,
               packed_step=train.make_packed_step(model, config.train, tx, mesh, layout.runs_per_device),
               eval_fn=evaluate.make_eval_fn(model), pairs=pairs, root_key=root_key, frozen_inference_size=frozen,
               skip_log=skip_log, watch=watch if watch is not None else preempt.PreemptionWatch(), log=log)


def initial_params(s: Setup, rep: Replicate):
  """The replicate's theta_0, saved once so that a restarted run rewinds to exactly the same weights."""
  path = workdir_lib.theta_dir(s.workdir, rep.index, 0)
  if checkpoint.params_exist(path):
    return checkpoint.load_params(path)
  theta_0 = jax.device_get(s.model.init(jax.random.fold_in(rep.key, 0), jax.device_get(s.vgg_params)))
  if s.config.model.init_from:
    from jaxtickets import port
    theta_0 = port.load_init_from(s.config.model.init_from, s.model, theta_0)  # checks name, width, shapes
    log(f"theta_0: decoder/transform from {s.config.model.init_from}")
  checkpoint.save_params(path, theta_0)
  return theta_0


def sparsity_report(s: Setup, masks, params) -> dict:
  """sparsity.count plus per-group sparsity and the whole inference network's (a fixed encoder's VGG included)."""
  report = sparsity.count(masks, s.prunable, params)
  report["groups"] = sparsity.count_by_group(masks)
  total = report["total"]
  size = total["size"] + s.frozen_inference_size
  report["inference"] = {"size": size, "remaining": total["remaining"] + s.frozen_inference_size,
                         "sparsity": (total["size"] - total["remaining"]) / size if size else 0.0}
  return report


def _dense_total(workdir: str, replicate: int) -> float:
  dense = workdir_lib.ticket_dir(workdir, "imp", 0, replicate)
  return float(checkpoint.load_ticket_metadata(dense)["metrics"]["total"])
