"""Iterative magnitude pruning with rewinding: rounds, branches, the matching decision, the results table.

  round 0: train the dense network from theta_0, keeping theta_k (the rewind point) on the way
  round r: prune 20% of the surviving weights of round r-1's trained network, rewind to theta_k * mask,
           reset the optimizer and the schedule (to step k), train again
  branches beside IMP, from the same theta_k and IMP's round-r sparsity:
           random_prune (random positions, IMP's per-layer counts), random_reinit (IMP's masks, a fresh init),
           oneshot (prune the dense network straight to round r's sparsity, by config.sparsity.method)
  replicates: all of the above again for r = 1 .. imp.replicates - 1 with seed + r (init, data order, random masks);
           results/tables.py turns the replicates' tickets into intervals and verdicts
"""

import dataclasses

import jax
import numpy as np

from jaxtickets.core import early_bird, evaluate, parallel, sparsity, streams
from jaxtickets.run import aot, train
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets import data
from jaxtickets.run import layout as layout_lib, preempt, order
from jaxtickets.results import tables as results
from jaxtickets.weights import files as weights
from jaxtickets.errors import UserError


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


@dataclasses.dataclass(frozen=True)
class Replicate:
  """One replicate: its index and seed (config.seed + index), which fix its init, data order and random masks."""
  index: int
  seed: int


def replicate(protocol, index: int) -> Replicate:
  return Replicate(index=index, seed=protocol.seed + index)


def run(run_settings, workdir: str, *, allow_config_change: bool = False) -> list[dict]:
  """Runs every configured branch and round of a run (its settings.RunSettings, from config.checked_settings) and
  returns the results rows.

  Re-running on the same workdir resumes: finished rounds are loaded, running ones continue from their last
  train-state checkpoint. SIGTERM or Ctrl-C saves a checkpoint and raises preempt.Preempted. In a multi-process
  run a problem one process finds while preparing stops every process with that process's sentence.
  """
  lock = None
  try:
    with preempt.PreemptionWatch() as watch:
      def prepare() -> train.RunContext:
        nonlocal lock
        # The VGG's hash and release first: a VGG problem stops the run before its workdir is touched.
        vgg = weights.describe_vgg(run_settings.model.vgg_weights, run_settings.model.width)
        lock = workdir_lib.open_run(workdir, resume=run_settings.resume, record=run_settings.record, vgg=vgg,
                                    allow_change=allow_config_change, log=log)
        return setup(run_settings, workdir, watch=watch, place=False)

      ctx = parallel.agree(prepare)
      data.check_listings_agree(ctx.compute.data)  # collective: every host lists the same data files
      ctx = with_run_state(ctx)
      try:
        return _run_rounds(ctx)
      finally:
        ctx.output.close()
  finally:
    if lock is not None:
      lock.release()


def setup(run_settings, workdir: str, *, watch=None, place: bool = True) -> train.RunContext:
  """The context of a run (its settings.RunSettings): what it computes with (model, loss VGG, masks' scope, eval
  pairs, the pack layout and mesh, the compiled functions) and where its work goes (the workdir, the log, the record
  of skipped images).

  With place=False the loss VGG stays in host memory: nothing here is collective then, so a multi-process run can
  agree on problems first (with_run_state places it).
  """
  step, protocol, data_spec = run_settings.step, run_settings.protocol, run_settings.data
  scope = protocol.pruning.scope
  skip_log = data.SkipLog(log)
  model, vgg_params = weights.model_and_vgg(run_settings.model)
  tx = train.make_optimizer(step.adam_eps)
  # On an accelerator the pack is sized by the compiled step's memory, before anything trains.
  layout = layout_lib.choose_layout(run_settings.packing, step.batch_size, concurrent=protocol.replicates,
                                    **aot.layout_sizing(model, step, data_spec.crop_size, tx))
  mesh = parallel.make_mesh(layout.runs_axis)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), vgg_params)
  prunable = sparsity.prunable_leaves(shapes, list(scope), allow_missing_groups=True)
  # Frozen groups (e.g. LST's pre-trained decoder) are never pruned: they are not trained to recover.
  prunable = {g: jax.tree.map(lambda p, g=g: p and g in model.trained_groups, sub) for g, sub in prunable.items()}
  if not any(jax.tree.leaves(prunable)):
    raise UserError(f"config.sparsity.scope = {','.join(scope)!r} selects no trained kernel of {model.name} "
                    f"(trained groups: {', '.join(model.trained_groups)}): add a trained group to the scope.")
  frozen = 0 if model.train_encoder else sum(int(np.size(a)) for a in jax.tree.leaves(
      model.encoder_params(None, vgg_params)))
  if layout.runs_per_step > 1 or layout.why:
    log(f"Packing: up to {layout.runs_per_step} runs side by side per step ({layout.runs_axis} on the mesh's 'runs' "
        f"axis x {layout.runs_per_device} per device, each run's batch over {mesh.shape[parallel.DATA_AXIS]} "
        "device(s)); config.parallel.pack_runs=false trains one run at a time."
        + (f" (Not more runs: {layout.why}.)" if layout.why else ""))
  compute = train.Compute(
      step=step, data=data_spec, protocol=protocol, model=model,
      vgg_params=parallel.put_replicated(vgg_params, mesh) if place else vgg_params,
      prunable=prunable, frozen_inference_size=frozen, mesh=mesh, layout=layout, tx=tx,
      packed_step=train.make_packed_step(model, step, tx, mesh, layout.runs_per_device),
      eval_fn=evaluate.make_eval_fn(model), pairs=data.eval_pairs(data_spec, skip_log=skip_log),
      init_from=run_settings.model.init_from)
  output = train.Output(workdir=workdir, skip_log=skip_log,
                       watch=watch if watch is not None else preempt.PreemptionWatch(),
                       keep_checkpoints=run_settings.checkpointing.keep,
                       async_checkpoints=run_settings.checkpointing.async_save, log=log)
  return train.RunContext(compute=compute, output=output)


def with_run_state(ctx: train.RunContext) -> train.RunContext:
  """`ctx` with the loss VGG on the devices, the workdir's train-state checkpoints, TensorBoard monitor and record of
  skipped images (the first collective steps of a multi-process run: after parallel.agree)."""
  from jaxtickets.run.monitor import Monitor

  c, out = ctx.compute, ctx.output
  if not isinstance(jax.tree.leaves(c.vgg_params)[0], jax.Array):
    c = dataclasses.replace(c, vgg_params=parallel.put_replicated(c.vgg_params, c.mesh))
  out.skip_log.merge(workdir_lib.load_skips(out.workdir))
  ckpts = checkpoint.TrainCheckpoints(workdir_lib.state_dir(out.workdir), keep=out.keep_checkpoints,
                                      async_save=out.async_checkpoints, log=log)
  return train.RunContext(compute=c, output=dataclasses.replace(out, ckpts=ckpts, monitor=Monitor(out.workdir)))


def _run_rounds(ctx: train.RunContext) -> list[dict]:
  """Every replicate's IMP rounds and baselines (order.Queue's order), then the results tables and the verdicts."""
  c, out = ctx.compute, ctx.output
  reps = {i: replicate(c.protocol, i) for i in range(c.protocol.replicates)}
  for group in order.replicate_groups(list(reps), c.layout.runs_per_step):
    _train_protocol(ctx, [reps[i] for i in group])
  # The renderer (and matplotlib with it) loads only here, at the end of a run.
  from jaxtickets.results import text as report_text  # pylint: disable=g-import-not-at-top
  rows, summary = results.write_results(out.workdir, c.model.name, c.protocol, skips=out.skip_log.summary())
  out.log(report_text.format_summary(summary))
  out.log(skipped_line(out.skip_log.summary()))
  for line in report_text.matching_lines(summary, c.protocol.match_tolerance):
    out.log(line)
  return rows


def _train_protocol(ctx: train.RunContext, reps: list[Replicate]) -> None:
  """The dense round, IMP's rounds and the baselines of `reps`, each training as soon as what it needs exists, in
  packs of layout.runs_per_step: a round's baselines fill the slots beside IMP's next round. Saved tickets are
  loaded instead of trained (a resumed run), without taking a slot."""
  c, out = ctx.compute, ctx.output
  protocol = c.protocol
  jobs = _Jobs(ctx, reps)
  queue = order.Queue([rep.index for rep in reps], protocol.rounds, list(protocol.branches))

  def finish(key: order.Key, ticket: checkpoint.Ticket) -> None:
    stop = False
    if key.branch == order.IMP:
      jobs.imp_tickets[key.replicate, key.round] = ticket
      reached = ticket.sparsity["prunable"]["sparsity"]
      if key.round and protocol.target_sparsity and reached >= protocol.target_sparsity:
        out.log(f"[rep {key.replicate}] reached the target sparsity {protocol.target_sparsity:.4f} at round "
                f"{key.round} ({reached:.4f}).")
        stop = True
    queue.done(key, stop=stop)

  n = c.layout.runs_per_step
  while queue:
    todo = []
    while len(todo) < n and (key := queue.pop()) is not None:
      job = jobs.build(key)
      path = workdir_lib.ticket_dir(out.workdir, job.branch, job.round, job.replicate.index)
      if checkpoint.ticket_exists(path):
        out.log(f"{job.label} already done, loading {path}")
        finish(key, checkpoint.load_ticket(path))
      else:
        todo.append((key, job))
    if not todo:
      continue
    for _, job in todo:
      _announce(ctx, job)
    trained = train.train_pack(ctx, [job for _, job in todo])
    for (key, job), result in zip(todo, trained):
      finish(key, _evaluate_and_save(ctx, job, result))
    out.ckpts.clear()  # the tickets supersede the pack's train-state checkpoints


class _Jobs:
  """Builds the job of a order.Key from what it needs: theta_0 or theta_k, and IMP's tickets so far."""

  def __init__(self, ctx: train.RunContext, reps: list[Replicate]):
    self.ctx, self.reps = ctx, {rep.index: rep for rep in reps}
    self.imp_tickets: dict[tuple[int, int], checkpoint.Ticket] = {}  # (replicate, round)
    self._theta_0, self._theta_k, self._reinit = {}, {}, {}

  def theta_0(self, rep: Replicate):
    if rep.index not in self._theta_0:
      self._theta_0[rep.index] = initial_params(self.ctx, rep)
    return self._theta_0[rep.index]

  def theta_k(self, rep: Replicate):
    if rep.index not in self._theta_k:
      self._theta_k[rep.index] = rewind_params(self.ctx, rep, self.theta_0(rep))
    return self._theta_k[rep.index]

  def reinit(self, rep: Replicate):
    """random_reinit's start: every trained group re-drawn (a trained encoder too); frozen groups keep theta_k."""
    if rep.index not in self._reinit:
      c = self.ctx.compute
      self._reinit[rep.index] = jax.device_get(c.model.reinit(streams.key(rep.seed, streams.Stream.REINIT),
                                                              jax.device_get(c.vgg_params), self.theta_k(rep)))
    return self._reinit[rep.index]

  def build(self, key: order.Key) -> train.Job:
    c, workdir = self.ctx.compute, self.ctx.output.workdir
    pruning, k = c.protocol.pruning, c.protocol.rewind_step
    rep, r = self.reps[key.replicate], key.round
    if key.branch == order.IMP and r == 0:
      theta_0 = self.theta_0(rep)
      return train.Job("imp", 0, rep, theta_0, sparsity.ones_masks(theta_0), start_step=0, keep_theta_at=k,
                      theta_path=workdir_lib.theta_dir(workdir, rep.index, k) if k else "",
                      early_bird=early_bird_watch(c))
    if key.branch == order.IMP:
      prev = self.imp_tickets[rep.index, r - 1]
      masks = sparsity.prune(pruning, prev.trained_params, prev.masks, c.prunable)
      return train.Job("imp", r, rep, self.theta_k(rep), masks, start_step=k)
    # The baselines beside IMP: the same theta_k and IMP's round-r sparsity.
    imp_masks, init = self.imp_tickets[rep.index, r].masks, self.theta_k(rep)
    if key.branch == "random_prune":
      masks = sparsity.random_prune_like(imp_masks, c.prunable, seed=streams.random_prune_seed(rep.seed, r))
    elif key.branch == "random_reinit":
      masks, init = imp_masks, self.reinit(rep)
    else:  # oneshot: the dense round's trained weights pruned at once, the way IMP prunes
      dense = self.imp_tickets[rep.index, 0]
      masks = sparsity.oneshot_masks(pruning, dense.trained_params, imp_masks, c.prunable)
    return train.Job(key.branch, r, rep, init, masks, start_step=k)


def early_bird_watch(c: train.Compute) -> early_bird.Watch | None:
  """The dense round's early-bird test (config.imp.early_bird), or None; sparsity.early_bird_masks draws its masks."""
  p = c.protocol
  if p.early_bird is None:
    return None
  return early_bird.Watch(every=p.early_bird.every, epsilon=p.early_bird.epsilon, patience=p.early_bird.patience,
                          draw=sparsity.early_bird_masks(p.pruning, p.target_sparsity, c.prunable),
                          prunable=c.prunable, min_step=p.rewind_step)


def rewind_params(ctx: train.RunContext, rep: Replicate, theta_0):
  """theta_k, the weights a pruned round rewinds to (theta_0 when k = 0)."""
  k = ctx.compute.protocol.rewind_step
  return theta_0 if k == 0 else checkpoint.load_params(workdir_lib.theta_dir(ctx.output.workdir, rep.index, k))


def _announce(ctx: train.RunContext, job: train.Job) -> None:
  c, out = ctx.compute, ctx.output
  report = sparsity_report(c, job.masks, job.init_params)
  out.log(f"{job.label} sparsity {report['prunable']['sparsity']:.4f} of prunable weights, "
          f"{report['inference']['sparsity']:.4f} of the inference network; training steps "
          f"{job.start_step}..{c.step.steps}")
  collapsed = sparsity.collapsed_layers(report)
  if collapsed and job.branch in ("imp", "oneshot"):
    out.log(f"WARNING: {job.label} layer collapse: {', '.join(collapsed)} above 99% sparsity (global pruning empties "
            "a layer first when its weights are smallest); config.sparsity.layer_cap (e.g. 0.95) stops it.")


def _evaluate_and_save(ctx: train.RunContext, job: train.Job, result: train.Result) -> checkpoint.Ticket:
  """Evaluates a trained run on the held-out pairs and saves its ticket (and refreshes the results tables)."""
  c, out = ctx.compute, ctx.output
  protocol, rep, trained = c.protocol, job.replicate, result.params
  path = workdir_lib.ticket_dir(out.workdir, job.branch, job.round, rep.index)
  report = sparsity_report(c, job.masks, job.init_params)
  metrics = evaluate.evaluate(c.eval_fn, jax.device_put(trained), jax.device_put(job.masks), c.vgg_params, c.pairs,
                              protocol.eval_batch_size)
  dense_total = metrics["total"] if job.round == 0 else _dense_total(out.workdir, rep.index)
  # The model's names travel with the ticket, so the results tables need no model to read it.
  metrics.update(branch=job.branch, round=job.round, replicate=rep.index, steps=result.end_step - job.start_step,
                 rewind_step=protocol.rewind_step, relative_to_dense=metrics["total"] / dense_total - 1.0,
                 nan_skips=result.nan_skips, terms=list(c.model.terms), extra_metrics=list(c.model.extra_metrics))
  # Recorded with the ticket, so the tables read it back instead of judging again.
  metrics["collapsed"] = evaluate.collapse_reason(metrics)
  if job.early_bird is not None:
    metrics.update(early_bird_step=result.early_bird_step, early_bird_history=result.early_bird_history)
  tag = f"{job.branch}/rep_{rep.index}"
  if out.monitor is not None and out.monitor.enabled:
    sample = {k: c.pairs[k][:4] for k in ("content", "style")}
    images = evaluate.stylize_pairs(c.model, trained, job.masks, jax.device_get(c.vgg_params), sample)
    scalars = {k: v for k, v in metrics.items() if k not in ("per_pair", "pair_names")}
    out.monitor.round_end(tag, job.round, scalars, report, images)
  named = ", ".join(f"{k} {metrics[k]:.4f}" for k in (*c.model.terms, *c.model.extra_metrics))
  out.log(f"{job.label} eval: total {metrics['total']:.4f} ({named}) on {len(c.pairs['content'])} pairs, "
          f"{metrics['relative_to_dense']:+.2%} vs "
          "this replicate's dense round (the verdicts come from all replicates at the end); content reconstructed "
          f"with itself as the style: {metrics[evaluate.RECON_PSNR]:.2f} dB PSNR "
          f"(a flat mean-colour image: {metrics[evaluate.FLAT_PSNR]:.2f} dB)")
  if job.round == 0 and metrics[evaluate.RECON_PSNR] < metrics[evaluate.FLAT_PSNR] + results.LEARNED_MARGIN_DB:
    out.log(f"WARNING: {job.label} the dense network reconstructs its held-out content less than "
            f"{results.LEARNED_MARGIN_DB:.0f} dB better than a flat mean-colour image: it has not learned the task, so "
            "verdicts about its tickets say little about style transfer (train longer, or see docs/study_cpu).")
  if metrics["collapsed"]:
    dropped = ("every comparison of this replicate is dropped" if job.branch == "imp" and job.round == 0 else
               "it is left out of its round's interval, and that round cannot match")
    out.log(f"WARNING: {job.label} collapsed ({metrics['collapsed']}): branch {job.branch}, round {job.round}, "
            f"replicate {rep.index}; {dropped}.")
  checkpoint.save_ticket(path, masks=job.masks, rewind_params=job.init_params, trained_params=trained,
                         metrics=metrics, sparsity=report)
  results.write_results(out.workdir, c.model.name, protocol, skips=out.skip_log.summary())
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


def initial_params(ctx: train.RunContext, rep: Replicate):
  """The replicate's theta_0, saved once so that a restarted run rewinds to exactly the same weights."""
  c = ctx.compute
  path = workdir_lib.theta_dir(ctx.output.workdir, rep.index, 0)
  if checkpoint.params_exist(path):
    return checkpoint.load_params(path)
  theta_0 = jax.device_get(c.model.init(streams.key(rep.seed, streams.Stream.INIT), jax.device_get(c.vgg_params)))
  if c.init_from:
    from jaxtickets.weights import port
    theta_0 = port.load_init_from(c.init_from, c.model, theta_0)  # checks name, width, shapes
    log(f"theta_0: decoder/transform from {c.init_from}")
  checkpoint.save_params(path, theta_0)
  return theta_0


def sparsity_report(c: train.Compute, masks, params) -> dict:
  """sparsity.count plus per-group sparsity and the whole inference network's (a fixed encoder's VGG included)."""
  report = sparsity.count(masks, c.prunable, params)
  report["groups"] = sparsity.count_by_group(masks)
  total = report["total"]
  size = total["size"] + c.frozen_inference_size
  report["inference"] = {"size": size, "remaining": total["remaining"] + c.frozen_inference_size,
                         "sparsity": (total["size"] - total["remaining"]) / size if size else 0.0}
  return report


def _dense_total(workdir: str, replicate: int) -> float:
  dense = workdir_lib.ticket_dir(workdir, "imp", 0, replicate)
  return float(checkpoint.load_ticket_metadata(dense)["metrics"]["total"])
