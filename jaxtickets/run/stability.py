"""Linear mode connectivity of a finished run's IMP rounds (the command line is jaxtickets/stability.py).

For each chosen round (replicate 0 by default) two copies of the round's start, theta_k * mask, are trained with
two different data orders (and step keys) over the round's steps; the held-out loss is then evaluated at
`points` evenly spaced weights on the straight line between the two trained networks (masked). The error
barrier is the highest loss on that path minus the mean of its two ends (Frankle et al. 2020): a round is stable
when the barrier is about zero, i.e. training from its start ends in one linearly connected basin whatever the
data order.

Writes stability.csv into the workdir (process 0: round, sparsity, rewind_step, barrier, barrier_relative, the
path's losses); report.md draws stability.png from it and adds a section. The copies are trained like any run (packed side by side, checkpointed
in W/stability/state, resumable: the same command continues); trained copies are kept in
W/stability/rep_<r>/round_NN/copy_<a|b>.
"""

import os

import jax
import numpy as np

from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.core import evaluate
from jaxtickets.run import imp, preempt, train
from jaxtickets.results import tables as results
from jaxtickets import storage
from jaxtickets.errors import UserError

CSV = workdir_lib.STABILITY_CSV
FIGURE = workdir_lib.STABILITY_FIGURE
COPIES = ("a", "b")
# Seeds of the copies' data orders, far from the run's own seed + replicate: the copies see other orders than
# the round did, and than each other.
_COPY_SEED_OFFSET = 7919


def barrier(path_losses) -> tuple[float, float]:
  """(absolute, relative) error barrier of losses along a path: max - mean of the two ends, and that over the
  mean of the ends. 0 when the path never rises above its ends' mean."""
  losses = np.asarray(path_losses, np.float64)
  ends = 0.5 * (losses[0] + losses[-1])
  value = float(np.max(losses) - ends)
  return value, (value / ends if ends else float("nan"))


def linear_barrier(path_losses) -> float:
  """The path's largest rise above the straight line between its two ends' losses. Unlike barrier(), a path that
  falls monotonically from a worse end to a better one has none."""
  losses = np.asarray(path_losses, np.float64)
  line = np.linspace(losses[0], losses[-1], len(losses))
  return float(np.max(losses - line))


def interpolate(a, b, alpha: float, masks):
  """(1 - alpha) a + alpha b, masked (both ends share the mask, so the line stays in the ticket's subspace)."""
  return jax.tree.map(lambda x, y, m: np.where(m, (1.0 - alpha) * np.asarray(x) + alpha * np.asarray(y), 0)
                      .astype(np.asarray(x).dtype), a, b, masks)


def path_losses(c: train.Compute, a, b, masks, points: int) -> list[float]:
  """The held-out total loss at `points` evenly spaced weights from a (alpha = 0) to b (alpha = 1)."""
  out = []
  for alpha in np.linspace(0.0, 1.0, points):
    params = interpolate(a, b, float(alpha), masks)
    losses = evaluate.evaluate(c.eval_fn, params, masks, c.vgg_params, c.pairs, c.protocol.eval_batch_size)
    out.append(losses["total"])
  return out


def start_params(workdir: str, rewind_step: int, ticket, replicate: int):
  """theta_k, the weights every round's copies start from at step k: the replicate's saved rewind point when k > 0.

  Not the ticket's rewind weights alone: round 0's ticket keeps theta_0, where the dense round began, and copies
  trained from theta_0 over steps k..T would measure another start than the pruned rounds rewind to.
  """
  k = rewind_step
  if k == 0:
    return ticket.rewind_params
  path = workdir_lib.theta_dir(workdir, replicate, k)
  if not checkpoint.params_exist(path):
    raise UserError(f"The run in '{workdir}' has no rewind point theta_{k} of replicate {replicate} ({path}): its "
                    f"dense round stopped before step {k} = imp.rewind_step (an early-bird stop of an older version), "
                    "so there is no start to measure; run it again in a new workdir to measure its stability.")
  return checkpoint.load_params(path)


def _copies(protocol, workdir: str, ticket, replicate: int, round_: int, same_order: bool) -> list[train.Job]:
  """The round's two copies as jobs: theta_k * mask from step k, each with its own data order (unless same_order)."""
  init = start_params(workdir, protocol.rewind_step, ticket, replicate)
  jobs = []
  for i, copy in enumerate(COPIES):
    seed = protocol.seed + replicate + _COPY_SEED_OFFSET * (1 if same_order else i + 1)
    rep = imp.Replicate(index=replicate, seed=seed)
    start = protocol.rewind_step
    jobs.append(train.Job(f"stability_{copy}", round_, rep, init, ticket.masks, start_step=start))
  return jobs


def run(workdir: str, rounds: list[int] | None = None, points: int = 11, replicate: int = 0,
        same_order: bool = False) -> list[dict]:
  """Trains the copies of each chosen round (skipping saved ones), measures the paths, writes the outputs."""
  if points < 3:
    raise UserError(f"--points={points} is too few for a path: use at least 3 (11 is usual).")
  run_settings = _load_settings(workdir)
  done = {r: workdir_lib.ticket_dir(workdir, "imp", r, replicate) for r in range(run_settings.protocol.rounds + 1)}
  done = {r: p for r, p in done.items() if checkpoint.ticket_exists(p)}
  if not done:
    raise UserError(f"The workdir '{workdir}' has no IMP ticket of replicate {replicate}: run "
                    f"`python -m jaxtickets.main --workdir={workdir}` first, or pick another --replicate.")
  chosen = sorted(done) if not rounds else rounds
  missing = [r for r in chosen if r not in done]
  if missing:
    raise UserError(f"--rounds names round(s) {', '.join(map(str, missing))} that the run in '{workdir}' has not "
                    f"finished (replicate {replicate} has rounds {', '.join(map(str, sorted(done)))}).")
  with preempt.PreemptionWatch() as watch:
    ctx = imp.with_run_state(imp.setup(run_settings, workdir_lib.stability_dir(workdir), watch=watch, place=False))
    try:
      rows = [_measure(ctx, workdir, done[r], replicate, r, points, same_order) for r in chosen]
    finally:
      ctx.output.close()
  if jax.process_index() == 0:
    results.write_stability_csv(os.path.join(workdir, CSV), rows)
  return rows


def _measure(ctx: train.RunContext, workdir: str, ticket_path: str, replicate: int, round_: int, points: int,
             same_order: bool) -> dict:
  c, out = ctx.compute, ctx.output
  ticket = checkpoint.load_ticket(ticket_path)
  trained = {}
  todo = []
  for copy, job in zip(COPIES, _copies(c.protocol, workdir, ticket, replicate, round_, same_order)):
    path = workdir_lib.stability_copy_dir(workdir, replicate, round_, copy)
    if checkpoint.params_exist(path):
      trained[copy] = checkpoint.load_params(path)
    else:
      todo.append((copy, job))
  if todo:
    out.log(f"[stability rep {replicate} round {round_}] training {len(todo)} copies of theta_k * mask "
            f"(steps {c.protocol.rewind_step}..{c.step.steps}), each with its own data order")
  n = c.layout.runs_per_step
  for start in range(0, len(todo), n):
    chunk = todo[start:start + n]
    for (copy, _), result in zip(chunk, train.train_pack(ctx, [job for _, job in chunk])):
      checkpoint.save_params(workdir_lib.stability_copy_dir(workdir, replicate, round_, copy), result.params)
      trained[copy] = result.params
    out.ckpts.clear()  # the saved copies supersede the pack's train-state checkpoints
  losses = path_losses(c, trained["a"], trained["b"], ticket.masks, points)
  value, relative = barrier(losses)
  above_line = linear_barrier(losses)
  out.log(f"[stability rep {replicate} round {round_}] sparsity {ticket.sparsity['prunable']['sparsity']:.4f}: "
          f"barrier {value:.4g} ({relative:+.2%} of the ends' mean; {above_line:.4g} above the line "
          f"between the ends); path {', '.join(f'{x:.4g}' for x in losses)}")
  return {"round": round_, "replicate": replicate, "sparsity": ticket.sparsity["prunable"]["sparsity"],
          "rewind_step": c.protocol.rewind_step, "barrier": value, "barrier_relative": relative,
          "barrier_linear": above_line, "path": losses}


def _load_settings(workdir: str):
  if not storage.isfile(workdir_lib.config_path(workdir)):
    raise UserError(f"'{workdir}' holds no run (no {workdir_lib.CONFIG}): pass the --workdir of a finished "
                    "`python -m jaxtickets.main` run.")
  return workdir_lib.load_run_settings(workdir)
