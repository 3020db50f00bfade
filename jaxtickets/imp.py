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
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxtickets import checkpoint, config as config_lib, data, evaluate, parallel, results, sparsity, train
from jaxtickets.results import ticket_dir
from jaxtickets.errors import UserError
from jaxtickets.models import get_model

SKIPPED_FILE = "skipped_images.json"


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


@dataclasses.dataclass
class Setup:
  """What every round shares; built once so the train step compiles once for the whole run."""
  config: Any
  workdir: str
  model: Any
  vgg_params: Any  # frozen loss VGG, replicated
  prunable: Any
  mesh: Any
  tx: Any
  step_fn: Callable
  eval_fn: Callable
  pairs: dict
  root_key: Any  # config.seed's: the random stand-in VGG is the same for every replicate, as pretrained weights are
  frozen_inference_size: int = 0  # frozen VGG weights the stylizing network reads (a fixed encoder), never pruned
  skip_log: Any = None  # data.SkipLog: unreadable images replaced so far
  ckpts: Any = None  # checkpoint.TrainCheckpoints of the running round
  watch: Any = None  # PreemptionWatch: SIGTERM / preemption notice
  monitor: Any = None  # monitor.Monitor: TensorBoard events (process 0 writes)


@dataclasses.dataclass
class Replicate:
  """What one replicate owns: its seed (config.seed + index) and the data order drawn from it."""
  index: int
  key: Any
  dataset: Any


def replicate(s: "Setup", index: int) -> Replicate:
  seed = s.config.seed + index
  dataset = data.make_train_dataset(s.config, s.config.train.batch_size, jax.process_index(), jax.process_count(),
                                    skip_log=s.skip_log, order_seed=seed)
  return Replicate(index=index, key=jax.random.PRNGKey(seed), dataset=dataset)


def run(config, workdir: str, *, allow_config_change: bool = False) -> list[dict]:
  """Runs every configured branch and round and returns the results rows.

  Re-running on the same workdir resumes: finished rounds are loaded, the running one continues from its last
  train-state checkpoint. SIGTERM saves a checkpoint and raises train.Preempted.
  """
  config_lib.validate(config)
  lock = _lock_workdir(config, workdir)
  watch = PreemptionWatch().install()
  s = None
  try:
    results.check_layout(workdir)
    _check_resume_config(config, workdir, allow_config_change)
    s = setup(config, workdir)
    s.skip_log.merge(_load_skips(workdir))
    s.ckpts = checkpoint.TrainCheckpoints(os.path.join(workdir, "state"), keep=config.checkpoint.keep,
                                          async_save=config.checkpoint.async_save, log=log)
    s.watch = watch
    from jaxtickets.monitor import Monitor
    s.monitor = Monitor(workdir)
    return _run_rounds(s)
  finally:
    watch.restore()
    if s is not None:
      if s.monitor is not None:
        s.monitor.close()
      if s.ckpts is not None:
        s.ckpts.close()  # a pending (async) checkpoint is complete before the process goes
      _save_skips(s)
    if lock is not None:
      lock.release()


def _run_rounds(s: Setup) -> list[dict]:
  """Every replicate's IMP rounds and baselines, then the results tables and the verdicts."""
  for index in range(s.config.imp.get("replicates", 1)):
    _run_replicate(s, replicate(s, index))
  rows, summary = results.write_results(s.workdir, s.config, skipped=s.skip_log.summary())
  log(results.format_summary(summary))
  log(skipped_line(s.skip_log.summary()))
  for line in results.matching_lines(summary, s.config.imp.match_tolerance):
    log(line)
  return rows


def _run_replicate(s: Setup, rep: Replicate) -> None:
  """One replicate: the dense round, IMP's rounds, then the baseline branches from IMP's masks."""
  config = s.config
  theta_0 = initial_params(s, rep)
  k = config.imp.rewind_step
  ones = sparsity.ones_masks(theta_0)

  dense = run_round(s, rep, "imp", 0, theta_0, ones, start_step=0, rewind_step=k)
  theta_k = theta_0 if k == 0 else checkpoint.load_params(os.path.join(results.init_dir(s.workdir, rep.index),
                                                                       f"theta_{k}"))
  imp_tickets = [dense]
  for r in range(1, config.imp.rounds + 1):
    prev = imp_tickets[-1]
    masks = prune(config, prev.trained_params, prev.masks, s.prunable)
    imp_tickets.append(run_round(s, rep, "imp", r, theta_k, masks, start_step=k))
    reached = imp_tickets[-1].sparsity["prunable"]["sparsity"]
    if config.imp.target_sparsity and reached >= config.imp.target_sparsity:
      log(f"Reached the target sparsity {config.imp.target_sparsity:.4f} at round {r} ({reached:.4f}).")
      break

  reinit = None
  for branch in config_lib.branches(config)[1:]:
    for r, imp_ticket in enumerate(imp_tickets[1:], start=1):
      init = theta_k
      if branch == "random_prune":
        masks = sparsity.random_prune_like(imp_ticket.masks, s.prunable, seed=(config.seed + rep.index) * 1009 + r)
      elif branch == "random_reinit":
        if reinit is None:  # every trained group re-drawn (a trained encoder too); frozen groups keep theta_k
          reinit = jax.device_get(s.model.reinit(jax.random.fold_in(rep.key, 2), jax.device_get(s.vgg_params),
                                                 theta_k))
        masks, init = imp_ticket.masks, reinit
      else:  # oneshot: the dense round's trained weights pruned at once, the way IMP prunes
        masks = oneshot_masks(config, dense.trained_params, imp_ticket.masks, s.prunable)
      run_round(s, rep, branch, r, init, masks, start_step=k)


class PreemptionWatch:
  """SIGTERM, Ctrl-C (SIGINT) and JAX's preemption notice as a host-side flag that the train loop reads after each step.

  The signal handlers only set the flag (no I/O in a handler), so the step finishes, a checkpoint is saved and the
  command prints how to resume, instead of a KeyboardInterrupt tearing through the input pipeline's threads. A
  second Ctrl-C gets Python's default (an immediate KeyboardInterrupt). install() replaces the handlers and
  restore() puts the previous ones back. In a multi-process run the processes agree at log and checkpoint
  intervals (a tiny allgather), or at JAX's preemption sync point where the preemption service runs.
  """

  SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}

  def __init__(self):
    self.reason: str | None = None
    self._previous = {}
    self._sync_point = True

  def install(self) -> "PreemptionWatch":
    if threading.current_thread() is threading.main_thread():  # Python allows handlers in the main thread only
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._on_signal)
    return self

  def restore(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
    self._previous = {}

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    self.reason = self.reason or self.SIGNALS.get(signum, f"signal {signum}")
    if signum == signal.SIGINT:
      signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once

  def __call__(self, step: int, synced: bool) -> bool:
    """Whether to checkpoint and stop after `step`; `synced` marks steps where every process asks."""
    if self._sync_point:
      try:
        from jax.experimental import multihost_utils

        if multihost_utils.reached_preemption_sync_point(step):
          self.reason = self.reason or "JAX's preemption notice"
          return True
      except Exception:  # pylint: disable=broad-except  (no preemption service: SIGTERM alone)
        self._sync_point = False
    if jax.process_count() == 1:
      return self.reason is not None
    if not synced:
      return False
    from jax.experimental import multihost_utils

    if np.any(multihost_utils.process_allgather(np.int32(self.reason is not None))):
      self.reason = self.reason or "SIGTERM on another process"
      return True
    return False


def _lock_workdir(config, workdir: str):
  """Locks the workdir (process 0 only); with config.resume = False, first moves a previous run aside."""
  if jax.process_index() != 0:
    os.makedirs(workdir, exist_ok=True)
    return None
  lock = checkpoint.WorkdirLock(workdir, log).acquire()
  if config.get("resume", True) or not (set(os.listdir(workdir)) - {checkpoint.WorkdirLock.NAME}):
    return lock
  aside = f"{workdir.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
  lock.release()
  os.rename(workdir, aside)
  log(f"config.resume is False: moved the previous run in '{workdir}' aside to '{aside}'; starting afresh.")
  return checkpoint.WorkdirLock(workdir, log).acquire()


def _has_progress(workdir: str) -> bool:
  """Whether the workdir holds anything computed (theta_0, a ticket, a train-state checkpoint)."""
  nonempty = lambda d: os.path.isdir(d) and bool(os.listdir(d))
  return any(nonempty(os.path.join(workdir, d)) for d in ("init", "tickets", "state"))


def _check_resume_config(config, workdir: str, allow_config_change: bool) -> None:
  """Refuses to resume a run under a changed config (unless allowed); writes config.json."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path) and _has_progress(workdir):
    changes = config_lib.config_changes(checkpoint.load_json(path), config)
    if changes and not allow_config_change:
      raise UserError(
          f"The workdir '{workdir}' holds a run with another config ({'; '.join(changes)}): run with the same "
          "config to resume it, pass --allow_config_change to resume it with this one, or set "
          "--config.resume=false to move it aside and start afresh.")
    if changes:
      log(f"WARNING: resuming '{workdir}' with a changed config (--allow_config_change): {'; '.join(changes)}.")
  if jax.process_index() == 0:
    checkpoint.save_json(path, json.loads(config.to_json()))


def _load_skips(workdir: str) -> dict:
  path = os.path.join(workdir, SKIPPED_FILE)
  try:
    return checkpoint.load_json(path) if os.path.exists(path) else {}
  except UserError:
    return {}  # a damaged record only loses the names of earlier skips; they are found again


def _save_skips(s: Setup) -> None:
  if jax.process_index() == 0 and s.skip_log is not None and len(s.skip_log):
    checkpoint.save_json(os.path.join(s.workdir, SKIPPED_FILE), s.skip_log.summary())


def skipped_line(summary: dict) -> str:
  """The run-summary line about unreadable images."""
  if not summary or not summary.get("count"):
    return "Data: no unreadable images were skipped."
  first = ", ".join(summary["first"][:3])
  more = ", ..." if summary["count"] > 3 else ""
  return (f"Data: skipped {summary['count']} unreadable images, each replaced by the next readable one "
          f"({first}{more}); the list is in summary.json.")


def setup(config, workdir: str) -> Setup:
  """Builds the model, loss VGG, masks' scope, data and the compiled functions."""
  model = get_model(config.model.name)(config_lib.model_config(config))
  root_key = jax.random.PRNGKey(config.seed)
  vgg_params = load_or_init_vgg(config, model, jax.random.fold_in(root_key, 1))
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size)
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
  return Setup(config=config, workdir=workdir, model=model, vgg_params=parallel.replicate(vgg_params, mesh),
               prunable=prunable, mesh=mesh, tx=tx, step_fn=train.make_train_step(model, config.train, tx, mesh),
               eval_fn=evaluate.make_eval_fn(model), pairs=pairs, root_key=root_key, skip_log=skip_log,
               frozen_inference_size=frozen)


def load_or_init_vgg(config, model, key):
  """The pretrained VGG from config.model.vgg_weights, or random weights with a loud warning."""
  from jaxtickets import weights

  if config.model.vgg_weights:
    expected = jax.eval_shape(model.init_vgg, key)
    return weights.load_vgg_weights(config.model.vgg_weights, expected)
  log("WARNING: config.model.vgg_weights is empty, so the VGG encoder and loss network are RANDOM: the run exercises "
      "the pipeline but its results are not meaningful for style transfer. Port vgg_normalised.pth with "
      "scripts/port_weights.py and set --config.model.vgg_weights=DIR.")
  return jax.device_get(model.init_vgg(key))


def initial_params(s: Setup, rep: Replicate):
  """The replicate's theta_0, saved once so that a restarted run rewinds to exactly the same weights."""
  path = os.path.join(results.init_dir(s.workdir, rep.index), "theta_0")
  if checkpoint.params_exist(path):
    return checkpoint.load_params(path)
  theta_0 = jax.device_get(s.model.init(jax.random.fold_in(rep.key, 0), jax.device_get(s.vgg_params)))
  if s.config.model.init_from:
    from jaxtickets import port
    theta_0 = port.load_init_from(s.config.model.init_from, s.model, theta_0)  # checks name, width, shapes
    log(f"theta_0: decoder/transform from {s.config.model.init_from}")
  checkpoint.save_params(path, theta_0)
  return theta_0


def prune(config, params, masks, prunable):
  """One IMP pruning step: config.sparsity.fraction of the surviving prunable weights, smallest magnitude."""
  fn = {"global": sparsity.global_magnitude_prune, "layerwise": sparsity.layerwise_magnitude_prune}
  return fn[config.sparsity.method](params, masks, prunable, config.sparsity.fraction,
                                    layer_cap=config.sparsity.layer_cap)


def oneshot_masks(config, dense_params, imp_masks, prunable):
  """The one-shot baseline's masks: the dense round's trained weights pruned straight to IMP's round, globally
  (IMP's total count, under the same layer cap) or layer-wise (IMP's count in every layer)."""
  if config.sparsity.method == "layerwise":
    return sparsity.prune_like(dense_params, prunable, imp_masks)
  target = sparsity.count(imp_masks, prunable)["prunable"]["sparsity"]
  return sparsity.prune_to_sparsity(dense_params, prunable, target, layer_cap=config.sparsity.layer_cap)


def sparsity_report(s: Setup, masks, params) -> dict:
  """sparsity.count plus per-group sparsity and the whole inference network's (a fixed encoder's VGG included)."""
  report = sparsity.count(masks, s.prunable, params)
  report["groups"] = sparsity.count_by_group(masks)
  total = report["total"]
  size = total["size"] + s.frozen_inference_size
  report["inference"] = {"size": size, "remaining": total["remaining"] + s.frozen_inference_size,
                         "sparsity": (total["size"] - total["remaining"]) / size if size else 0.0}
  return report


def run_round(s: Setup, rep: Replicate, branch: str, round_: int, init_params, masks, *, start_step: int,
              rewind_step: int | None = None) -> checkpoint.Ticket:
  """Trains init_params * masks from start_step to train.steps, evaluates and saves the ticket; skips a saved one.

  A round interrupted earlier continues from its last train-state checkpoint (same step, params, optimizer state,
  data position); every `checkpoint.every_steps` steps the state is saved again.
  """
  path = ticket_dir(s.workdir, branch, round_, rep.index)
  label = f"[rep {rep.index} {branch} round {round_}]"
  if checkpoint.ticket_exists(path):
    log(f"{label} already done, loading {path}")
    return checkpoint.load_ticket(path)
  cfg = s.config
  report = sparsity_report(s, masks, init_params)
  log(f"{label} sparsity {report['prunable']['sparsity']:.4f} of prunable weights, "
      f"{report['inference']['sparsity']:.4f} of the inference network; training steps {start_step}..{cfg.train.steps}")
  collapsed = sparsity.collapsed_layers(report)
  if collapsed and branch in ("imp", "oneshot"):
    log(f"WARNING: {label} layer collapse: {', '.join(collapsed)} above 99% sparsity (global pruning empties a "
        "layer first when its weights are smallest); config.sparsity.layer_cap (e.g. 0.95) stops it.")

  state = train.create_state(init_params, masks, start_step, s.tx, s.mesh, s.model.trained_groups)
  device_masks = parallel.replicate(masks, s.mesh)
  state = _resume_state(s, rep, branch, round_, state, masks, label)
  key = jax.random.fold_in(rep.key, 3)
  # Element i of the dataset is global step i, so the iterator's whole state is the step it starts at.
  batches = data.make_train_iterator(rep.dataset, start_step=int(jax.device_get(state.step)),
                                     num_threads=cfg.data.num_threads, prefetch=cfg.data.prefetch)
  last_good = s.ckpts.latest if s.ckpts is not None else (lambda: "none")
  policy = cfg.train.get("nan_policy", "stop")

  on_step = None
  theta_k_path = os.path.join(results.init_dir(s.workdir, rep.index), f"theta_{rewind_step}")
  if rewind_step and not checkpoint.params_exist(theta_k_path):  # keep theta_k, the weights after k dense steps
    def on_step(step, state):
      if step == rewind_step:
        first_bad, _ = train.health(state)
        if first_bad >= 0 and policy == "stop":
          raise train.non_finite_error(first_bad, label, last_good())
        checkpoint.save_params(theta_k_path, jax.device_get(state.params))

  save = None
  if s.ckpts is not None:
    def save(step, state):
      s.ckpts.save(step, train.state_dict(state), device_masks,
                   {"branch": branch, "round": round_, "replicate": rep.index, "start_step": start_step,
                    "data_iterator": {"next_index": int(step)}})
      _save_skips(s)

  tag = f"{branch}/rep_{rep.index}"
  state = train.train(s.step_fn, state, device_masks, s.vgg_params, batches, cfg.train.steps, key, s.mesh,
                      log_every=cfg.train.log_every, label=label, on_step=on_step, log=log, nan_policy=policy,
                      save=save, save_every=cfg.checkpoint.every_steps, stop=s.watch, last_good=last_good,
                      on_log=s.monitor.train_callback(tag, round_, cfg.train) if s.monitor else None)
  trained = jax.device_get(state.params)
  metrics = evaluate.evaluate(s.eval_fn, state.params, device_masks, s.vgg_params, s.pairs, cfg.eval.batch_size)
  dense_total = metrics["total"] if round_ == 0 else _dense_total(s.workdir, rep.index)
  metrics.update(branch=branch, round=round_, replicate=rep.index, steps=cfg.train.steps - start_step,
                 rewind_step=cfg.imp.rewind_step, relative_to_dense=metrics["total"] / dense_total - 1.0,
                 nan_skips=train.health(state)[1])
  if s.monitor is not None and s.monitor.enabled:
    sample = {k: s.pairs[k][:4] for k in ("content", "style")}
    images = evaluate.stylize_pairs(s.model, trained, jax.device_get(masks), jax.device_get(s.vgg_params), sample)
    scalars = {k: v for k, v in metrics.items() if k != "per_pair"}
    s.monitor.round_end(tag, round_, scalars, report, images)
  log(f"{label} eval: total {metrics['total']:.4f} (content {metrics['content']:.4f}, "
      f"style {metrics['style']:.4f}) on {len(s.pairs['content'])} pairs, {metrics['relative_to_dense']:+.2%} vs "
      "this replicate's dense round (the verdicts come from all replicates at the end)")
  checkpoint.save_ticket(path, masks=jax.device_get(masks), rewind_params=jax.device_get(init_params),
                         trained_params=trained, metrics=metrics, sparsity=report)
  if s.ckpts is not None:
    s.ckpts.clear()  # the ticket supersedes the round's train-state checkpoints
  results.write_results(s.workdir, cfg, skipped=s.skip_log.summary() if s.skip_log is not None else None)
  return checkpoint.Ticket(
      path=path, masks=jax.device_get(masks), rewind_params=jax.device_get(init_params), trained_params=trained,
      metrics=metrics, sparsity=report)


def _resume_state(s: Setup, rep: Replicate, branch: str, round_: int, state, masks, label: str):
  """The round's last checkpointed state if there is one (a resumed run), else `state` (a fresh round)."""
  if s.ckpts is None:
    return state
  restored = s.ckpts.restore(branch, round_, train.state_dict(state), masks, replicate=rep.index)
  if restored is None:
    return state
  state = train.state_from_dict(restored[0])
  log(f"{label} resuming at step {int(jax.device_get(state.step))} from the checkpoint "
      f"'{os.path.join(s.workdir, 'state', str(restored[1]['step']))}'")
  return state


def _dense_total(workdir: str, replicate: int) -> float:
  return float(checkpoint.load_ticket_metadata(ticket_dir(workdir, "imp", 0, replicate))["metrics"]["total"])
