"""Iterative magnitude pruning with rewinding: rounds, branches, the matching decision, the results table.

  round 0: train the dense network from theta_0, keeping theta_k (the rewind point) on the way
  round r: prune 20% of the surviving weights of round r-1's trained network, rewind to theta_k * mask,
           reset the optimizer and the schedule (to step k), train again
  branches beside IMP, from the same theta_k and IMP's round-r sparsity:
           random_prune (random positions, IMP's per-layer counts), random_reinit (IMP's masks, a fresh init),
           oneshot (prune the dense network straight to round r's sparsity)
"""

import csv
import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

from jaxtickets import checkpoint, config as config_lib, data, evaluate, parallel, sparsity, train
from jaxtickets.errors import UserError
from jaxtickets.models import get_model

SKIPPED_FILE = "skipped_images.json"

RESULT_FIELDS = ("branch", "round", "steps", "sparsity_prunable", "sparsity_total", "remaining_prunable",
                 "remaining_total", "content", "style", "total", "relative_to_dense", "matches")


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
  dataset: Any
  pairs: dict
  root_key: Any
  skip_log: Any = None  # data.SkipLog: unreadable images replaced so far
  ckpts: Any = None  # checkpoint.TrainCheckpoints of the running round
  watch: Any = None  # PreemptionWatch: SIGTERM / preemption notice
  monitor: Any = None  # monitor.Monitor: TensorBoard events (process 0 writes)


def ticket_dir(workdir: str, branch: str, round_: int) -> str:
  return os.path.join(workdir, "tickets", branch, f"round_{round_:02d}")


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
  """IMP's rounds, then the baseline branches, then the results table."""
  config, workdir = s.config, s.workdir
  theta_0 = initial_params(s)
  k = config.imp.rewind_step
  ones = sparsity.ones_masks(theta_0)

  dense = run_round(s, "imp", 0, theta_0, ones, start_step=0, rewind_step=k)
  theta_k = theta_0 if k == 0 else checkpoint.load_params(os.path.join(workdir, "init", f"theta_{k}"))

  imp_tickets = [dense]
  for r in range(1, config.imp.rounds + 1):
    prev = imp_tickets[-1]
    masks = prune(config, prev.trained_params, prev.masks, s.prunable)
    imp_tickets.append(run_round(s, "imp", r, theta_k, masks, start_step=k))
    reached = imp_tickets[-1].sparsity["prunable"]["sparsity"]
    if config.imp.target_sparsity and reached >= config.imp.target_sparsity:
      log(f"Reached the target sparsity {config.imp.target_sparsity:.4f} at round {r} ({reached:.4f}).")
      break

  reinit = None
  for branch in config_lib.branches(config)[1:]:
    for r, imp_ticket in enumerate(imp_tickets[1:], start=1):
      init = theta_k
      if branch == "random_prune":
        masks = sparsity.random_prune_like(imp_ticket.masks, s.prunable, seed=config.seed * 1009 + r)
      elif branch == "random_reinit":
        if reinit is None:
          fresh = jax.device_get(s.model.init(jax.random.fold_in(s.root_key, 2), jax.device_get(s.vgg_params)))
          # Only trained groups are re-drawn; frozen (pre-trained) groups keep theta_k's values.
          reinit = {g: (fresh[g] if g in s.model.trained_groups else v) for g, v in theta_k.items()}
        masks, init = imp_ticket.masks, reinit
      else:  # oneshot
        target = imp_ticket.sparsity["prunable"]["sparsity"]
        masks = sparsity.prune_to_sparsity(dense.trained_params, s.prunable, target)
      run_round(s, branch, r, init, masks, start_step=k)

  rows = write_results(workdir, config, skipped=s.skip_log.summary())
  log(format_results(rows))
  log(skipped_line(s.skip_log.summary()))
  for branch, best in highest_matching(rows).items():
    log(f"Highest matching sparsity ({branch}): {best['sparsity_prunable']:.4f} of the prunable weights "
        f"({best['sparsity_total']:.4f} of all), round {best['round']}." if best else
        f"No pruned round of {branch} matches the dense network within {config.imp.match_tolerance:.1%}.")
  return rows


class PreemptionWatch:
  """SIGTERM (and JAX's preemption notice) as a host-side flag that the train loop reads after each step.

  The signal handler only sets the flag (no I/O in a handler); install() replaces the SIGTERM handler and
  restore() puts the previous one back. In a multi-process run the processes agree at log and checkpoint
  intervals (a tiny allgather), or at JAX's preemption sync point where the preemption service runs.
  """

  def __init__(self):
    self.reason: str | None = None
    self._previous = None
    self._installed = False
    self._sync_point = True

  def install(self) -> "PreemptionWatch":
    if threading.current_thread() is threading.main_thread():  # Python allows handlers in the main thread only
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
      self._installed = True
    return self

  def restore(self) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
      self._installed = False

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    self.reason = self.reason or "SIGTERM"

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
  dataset = data.make_train_dataset(config, config.train.batch_size, jax.process_index(), jax.process_count(),
                                    skip_log=skip_log)
  pairs = data.eval_pairs(config, skip_log=skip_log)
  return Setup(config=config, workdir=workdir, model=model, vgg_params=parallel.replicate(vgg_params, mesh),
               prunable=prunable, mesh=mesh, tx=tx, step_fn=train.make_train_step(model, config.train, tx, mesh),
               eval_fn=evaluate.make_eval_fn(model), dataset=dataset, pairs=pairs, root_key=root_key,
               skip_log=skip_log)


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


def initial_params(s: Setup):
  """theta_0, saved once so that a restarted run rewinds to exactly the same weights."""
  path = os.path.join(s.workdir, "init", "theta_0")
  if checkpoint.params_exist(path):
    return checkpoint.load_params(path)
  theta_0 = jax.device_get(s.model.init(jax.random.fold_in(s.root_key, 0), jax.device_get(s.vgg_params)))
  if s.config.model.init_from:
    from jaxtickets import port
    theta_0 = port.load_init_from(s.config.model.init_from, s.model, theta_0)  # checks name, width, shapes
    log(f"theta_0: decoder/transform from {s.config.model.init_from}")
  checkpoint.save_params(path, theta_0)
  return theta_0


def prune(config, params, masks, prunable):
  """One IMP pruning step: config.sparsity.fraction of the surviving prunable weights, smallest magnitude."""
  fn = {"global": sparsity.global_magnitude_prune, "layerwise": sparsity.layerwise_magnitude_prune}
  return fn[config.sparsity.method](params, masks, prunable, config.sparsity.fraction)


def run_round(s: Setup, branch: str, round_: int, init_params, masks, *, start_step: int,
              rewind_step: int | None = None) -> checkpoint.Ticket:
  """Trains init_params * masks from start_step to train.steps, evaluates and saves the ticket; skips a saved one.

  A round interrupted earlier continues from its last train-state checkpoint (same step, params, optimizer state,
  data position); every `checkpoint.every_steps` steps the state is saved again.
  """
  path = ticket_dir(s.workdir, branch, round_)
  if checkpoint.ticket_exists(path):
    log(f"[{branch} round {round_}] already done, loading {path}")
    return checkpoint.load_ticket(path)
  cfg = s.config
  label = f"[{branch} round {round_}]"
  report = sparsity.count(masks, s.prunable, init_params)
  log(f"{label} sparsity {report['prunable']['sparsity']:.4f} of prunable weights, "
      f"{report['total']['sparsity']:.4f} of all; training steps {start_step}..{cfg.train.steps}")

  state = train.create_state(init_params, masks, start_step, s.tx, s.mesh, s.model.trained_groups)
  device_masks = parallel.replicate(masks, s.mesh)
  state = _resume_state(s, branch, round_, state, masks, label)
  key = jax.random.fold_in(s.root_key, 3)
  # Element i of the dataset is global step i, so the iterator's whole state is the step it starts at.
  batches = data.make_train_iterator(s.dataset, start_step=int(jax.device_get(state.step)),
                                     num_threads=cfg.data.num_threads, prefetch=cfg.data.prefetch)
  last_good = s.ckpts.latest if s.ckpts is not None else (lambda: "none")
  policy = cfg.train.get("nan_policy", "stop")

  on_step = None
  theta_k_path = os.path.join(s.workdir, "init", f"theta_{rewind_step}")
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
                   {"branch": branch, "round": round_, "start_step": start_step,
                    "data_iterator": {"next_index": int(step)}})
      _save_skips(s)

  state = train.train(s.step_fn, state, device_masks, s.vgg_params, batches, cfg.train.steps, key, s.mesh,
                      log_every=cfg.train.log_every, label=label, on_step=on_step, log=log, nan_policy=policy,
                      save=save, save_every=cfg.checkpoint.every_steps, stop=s.watch, last_good=last_good,
                      on_log=s.monitor.train_callback(branch, round_, cfg.train) if s.monitor else None)
  trained = jax.device_get(state.params)
  metrics = evaluate.evaluate(s.eval_fn, state.params, device_masks, s.vgg_params, s.pairs, cfg.eval.batch_size)
  dense_total = metrics["total"] if round_ == 0 else _dense_total(s.workdir)
  metrics.update(branch=branch, round=round_, steps=cfg.train.steps - start_step,
                 relative_to_dense=metrics["total"] / dense_total - 1.0,
                 matches=bool(metrics["total"] <= dense_total * (1.0 + cfg.imp.match_tolerance)),
                 nan_skips=train.health(state)[1])
  if s.monitor is not None and s.monitor.enabled:
    sample = {k: s.pairs[k][:4] for k in ("content", "style")}
    images = evaluate.stylize_pairs(s.model, trained, jax.device_get(masks), jax.device_get(s.vgg_params), sample)
    s.monitor.round_end(branch, round_, metrics, report, images)
  log(f"{label} eval: total {metrics['total']:.4f} (content {metrics['content']:.4f}, "
      f"style {metrics['style']:.4f}), {metrics['relative_to_dense']:+.2%} vs dense -> "
      f"{'matches' if metrics['matches'] else 'does not match'}")
  checkpoint.save_ticket(path, masks=jax.device_get(masks), rewind_params=jax.device_get(init_params),
                         trained_params=trained, metrics=metrics, sparsity=report)
  if s.ckpts is not None:
    s.ckpts.clear()  # the ticket supersedes the round's train-state checkpoints
  write_results(s.workdir, cfg, skipped=s.skip_log.summary() if s.skip_log is not None else None)
  return checkpoint.Ticket(
      path=path, masks=jax.device_get(masks), rewind_params=jax.device_get(init_params), trained_params=trained,
      metrics=metrics, sparsity=report)


def _resume_state(s: Setup, branch: str, round_: int, state, masks, label: str):
  """The round's last checkpointed state if there is one (a resumed run), else `state` (a fresh round)."""
  if s.ckpts is None:
    return state
  restored = s.ckpts.restore(branch, round_, train.state_dict(state), masks)
  if restored is None:
    return state
  state = train.state_from_dict(restored[0])
  log(f"{label} resuming at step {int(jax.device_get(state.step))} from the checkpoint "
      f"'{os.path.join(s.workdir, 'state', str(restored[1]['step']))}'")
  return state


def _dense_total(workdir: str) -> float:
  return float(checkpoint.load_ticket(ticket_dir(workdir, "imp", 0)).metrics["total"])


def collect_rows(workdir: str) -> list[dict]:
  """One row per saved ticket, IMP first, by round."""
  rows = []
  root = os.path.join(workdir, "tickets")
  order = {b: i for i, b in enumerate(config_lib.BRANCHES)}
  branches = sorted(os.listdir(root), key=lambda b: (order.get(b, 99), b)) if os.path.isdir(root) else []
  for branch in branches:
    for name in sorted(os.listdir(os.path.join(root, branch))):
      path = os.path.join(root, branch, name)
      if not (name.startswith("round_") and checkpoint.ticket_exists(path)):
        continue
      meta = checkpoint.load_ticket_metadata(path)
      m, sp = meta["metrics"], meta["sparsity"]
      rows.append(dict(branch=branch, round=int(m["round"]), steps=int(m["steps"]),
                       sparsity_prunable=sp["prunable"]["sparsity"], sparsity_total=sp["total"]["sparsity"],
                       remaining_prunable=sp["prunable"]["remaining"], remaining_total=sp["total"]["remaining"],
                       content=m["content"], style=m["style"], total=m["total"],
                       relative_to_dense=m["relative_to_dense"], matches=bool(m["matches"])))
  return rows


def write_results(workdir: str, config, skipped: dict | None = None) -> list[dict]:
  """results.csv (one row per branch and round) and summary.json (highest matching sparsity per branch, skips).

  `skipped` is a data.SkipLog summary; None reads the workdir's record of skipped images.
  """
  rows = collect_rows(workdir)
  tmp = os.path.join(workdir, "results.csv.tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
  os.replace(tmp, os.path.join(workdir, "results.csv"))
  skipped = _load_skips(workdir) if skipped is None else skipped
  summary = {"model": config.model.name, "match_tolerance": config.imp.match_tolerance,
             "highest_matching": highest_matching(rows),
             "skipped_images": {"count": skipped.get("count", 0), "first": skipped.get("first", [])}}
  checkpoint.save_json(os.path.join(workdir, "summary.json"), summary)
  return rows


def highest_matching(rows: list[dict]) -> dict:
  """Per branch, the matching pruned round of highest sparsity (None if no pruned round matches)."""
  best = {}
  for row in rows:
    if row["round"] == 0:
      continue
    cur = best.get(row["branch"])
    if row["matches"] and (cur is None or row["sparsity_prunable"] > cur["sparsity_prunable"]):
      best[row["branch"]] = row
    else:
      best.setdefault(row["branch"], None)
  return best


def format_results(rows: list[dict]) -> str:
  """The results table printed at the end of a run."""
  head = f"{'branch':<14}{'round':>6}{'sparsity':>10}{'(all)':>9}{'remaining':>12}{'content':>10}{'style':>10}" \
         f"{'total':>10}{'vs dense':>10}  match"
  lines = [head, "-" * len(head)]
  for r in rows:
    lines.append(f"{r['branch']:<14}{r['round']:>6}{r['sparsity_prunable']:>10.4f}{r['sparsity_total']:>9.4f}"
                 f"{r['remaining_prunable']:>12,}{r['content']:>10.4f}{r['style']:>10.4f}{r['total']:>10.4f}"
                 f"{r['relative_to_dense']:>+10.2%}  {'yes' if r['matches'] else 'no'}")
  return "\n".join(lines)
