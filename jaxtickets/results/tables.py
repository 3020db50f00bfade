"""A run's results as tables, rebuilt from its saved tickets (workdir.py says where everything lives).

  results.csv    one row per branch x round x replicate: sparsities, why the ticket collapsed (collapsed, empty
                 when it did not), the learnability check (recon_psnr, flat_psnr, when recorded), held-out losses
                 (each of the model's own terms, then the total), and relative_to_dense: this ticket's mean total
                 loss over its own replicate's dense round's, minus 1
  summary.csv    one row per branch x round: the replicates used, the tickets left out as collapsed (collapsed) and
                 the replicates dropped because their dense round collapsed (dense_collapsed); relative_to_dense,
                 the geometric mean ratio of held-out loss (ticket / its own replicate's dense network) - 1 over
                 the replicates used and the held-out set's image combinations, its interval (ci_low, ci_high:
                 stats.replicate_interval), the verdict, the same per loss term (<term>_relative, <term>_ci_low,
                 <term>_ci_high), each baseline against IMP at the same round (vs_imp: the geometric mean ratio
                 baseline / IMP - 1, positive when IMP is better), and the mean recon_psnr and flat_psnr
  summary.json   the highest matching sparsity per branch (the headline), the exploratory sparsest matching round,
                 the match rule, the replicate spread and the replicates it calls for, the unreadable images
                 skipped, the runs left out as collapsed, the terms
  pairs.csv      one row per branch x round x replicate x held-out pair: the pair's index and name, its
                 content_image and style_image (the name 'content__style' split), the ticket's collapse reason
                 (empty when it did not collapse), and every metric its evaluation recorded per pair (the loss
                 terms, the total, then the rest), at full precision: summary.csv's estimates, intervals and
                 verdicts can be recomputed from it alone (the dense rounds are its rows of branch imp, round 0)

A collapsed run (evaluate.collapse_reason: a NaN loss, a constant output, a reconstruction below a flat image) is
named, never averaged: see summarize.

The loss terms are the names the model declares (StyleModel.terms, e.g. content and style, or AdaAttN's global and
local); each ticket records them, so the tables are rebuilt without building the model.

Tables and numbers only (also the stability rows and the study's early-bird comparison): results/text.py words
them, reports/ draws them.
"""

import csv
import io
import math
import os

import jax
import numpy as np

from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets import config as config_lib, storage
from jaxtickets.core import evaluate
from jaxtickets.results import stats
from jaxtickets.errors import UserError
from jaxtickets.models import GROUPS

CONFIDENCE = 0.95
# The learnability check each ticket records (evaluate.py): PSNR in dB of the held-out content reconstructed with
# itself as the style, and of a flat mean-colour image of it. A dense network less than LEARNED_MARGIN_DB above the
# flat image has not learned to reconstruct, and verdicts about its tickets say little about style transfer.
LEARNABILITY = ("recon_psnr", "flat_psnr")
LEARNED_MARGIN_DB = 3.0
# The tolerances the replicate planner always answers for, beside the run's own.
PLANNED_TOLERANCES = (0.02, 0.10)
PLANNED_POWER = 0.8
ESTIMATOR = ("geometric mean ratio of held-out total loss (ticket / its own replicate's dense network) - 1, over "
             "replicates and the held-out set's image combinations")
SPARSEST_NOTE = ("exploratory: the sparsest matching round anywhere, which may follow a round that did not match; "
                 "the best of many tests, so its interval does not hold for the choice. The headline is "
                 "highest_matching, which needs every round before it to match too.")
# The default model's (AdaIN's) loss terms, the columns' default.
DEFAULT_TERMS = ("content", "style")


def result_fields(terms=DEFAULT_TERMS, extra_metrics=(), learnability: bool = False) -> tuple[str, ...]:
  """results.csv's columns for a model with these loss terms and extra metrics (and the learnability check's).

  The learnability columns go before the losses, so the losses stay the last columns, where tools look for them.
  """
  return ("branch", "replicate", "round", "steps", "rewind_step", "sparsity_prunable", "sparsity_total",
          "sparsity_inference", *(f"sparsity_{g}" for g in GROUPS), "remaining_prunable", "remaining_total",
          "collapsed", *(LEARNABILITY if learnability else ()), *terms, *extra_metrics, "total", "relative_to_dense")


def summary_fields(terms=DEFAULT_TERMS) -> tuple[str, ...]:
  """summary.csv's columns for a model with these loss terms (total alone decides the verdict)."""
  return ("branch", "round", "replicates", "collapsed", "dense_collapsed", "pairs", "combinations",
          "sparsity_prunable", "sparsity_total",
          "sparsity_inference", "total", "relative_to_dense", "ci_low", "ci_high", "verdict",
          *(f"{t}_{k}" for t in terms for k in ("relative", "ci_low", "ci_high")),
          "vs_imp", "vs_imp_ci_low", "vs_imp_ci_high", "vs_imp_verdict", *LEARNABILITY, "recon_margin_min")


RESULT_FIELDS = result_fields()  # the columns of a model whose terms are content and style
SUMMARY_FIELDS = summary_fields()
MATCH_RULE = ("A round matches when the whole {conf:.0%} interval of its " + ESTIMATOR + ", lies below +{tol:.1%}, "
              "does not match when the whole interval lies above, and is inconclusive otherwise (always with a "
              "single replicate, which cannot measure seed noise). The interval is the t interval over replicates "
              "of each replicate's mean log ratio over the held-out image combinations (a combination's crops "
              "averaged first): the seeds are random, the held-out images fixed, so it speaks for these images.")


def branch_order(branch: str):
  """The sort key of a branch: the configured branches in their order (IMP first), then any other by name."""
  order = {b: i for i, b in enumerate(config_lib.BRANCHES)}
  return order.get(branch, 99), branch


def collect_rows(workdir: str) -> list[dict]:
  """One row per saved ticket (IMP first, then by replicate and round), with the per-pair losses under 'per_pair'."""
  found = sorted(workdir_lib.ticket_dirs(workdir), key=lambda t: (branch_order(t[0]), t[1], t[2]))
  return [_row(branch, replicate, checkpoint.load_ticket_metadata(path))
          for branch, replicate, _, path in found if checkpoint.ticket_exists(path)]


def recorded_terms(metrics: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(loss terms, extra metrics) a ticket's metrics recorded."""
  return tuple(metrics.get("terms", ())), tuple(metrics.get("extra_metrics", ()))


def run_terms(rows: list[dict]) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(loss terms, extra metrics) of a run's rows, in the order the model declares them."""
  ordered = lambda key: tuple(dict.fromkeys(n for r in rows for n in r.get(key, ())))
  return ordered("terms"), ordered("extra_metrics")


def _row(branch: str, replicate: int, meta: dict) -> dict:
  m, sp = meta["metrics"], meta["sparsity"]
  terms, extra = recorded_terms(m)
  groups = sp.get("groups", {})
  row = dict(branch=branch, replicate=replicate, round=int(m["round"]), steps=int(m["steps"]),
             rewind_step=int(m.get("rewind_step", 0)), sparsity_prunable=sp["prunable"]["sparsity"],
             sparsity_total=sp["total"]["sparsity"], sparsity_inference=sp.get("inference", sp["total"])["sparsity"])
  for g in GROUPS:
    if g in groups:
      row[f"sparsity_{g}"] = groups[g]["sparsity"]
  row.update(remaining_prunable=sp["prunable"]["remaining"], remaining_total=sp["total"]["remaining"],
             **{k: m[k] for k in terms + extra}, total=m["total"], relative_to_dense=m["relative_to_dense"],
             per_pair=m.get("per_pair") or {k: [m[k]] for k in ("total", *terms)}, terms=terms, extra_metrics=extra,
             pair_names=m.get("pair_names") if m.get("per_pair") else None)
  row.update({k: m[k] for k in LEARNABILITY if m.get(k) is not None})
  # Tickets saved before the reason was recorded are judged now, from the same metrics.
  row["collapsed"] = m["collapsed"] if "collapsed" in m else evaluate.collapse_reason(m)
  if m.get("early_bird_step") is not None:
    row.update(early_bird_step=int(m["early_bird_step"]), early_bird_history=m.get("early_bird_history", []))
  return row


def _csv_value(v):
  if isinstance(v, float):
    return "" if np.isnan(v) else f"{v:.6f}"
  return "" if v is None else v


def _exact_value(v):
  """pairs.csv's cells: floats as repr writes them (the shortest text that reads back to the same float)."""
  return repr(float(v)) if isinstance(v, float) else ("" if v is None else v)


def _write_csv(path: str, fields, rows: list[dict], value=_csv_value) -> None:
  present = [f for f in fields if any(f in r for r in rows)] if rows else list(fields)
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=present, extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: value(row.get(k)) for k in present})
  storage.write_atomically(path, text.getvalue())


# The images are content_image and style_image: most models have loss terms named content and style.
PAIR_KEYS = ("branch", "round", "replicate", "pair", "pair_name", "content_image", "style_image", "collapsed")


def pair_fields(rows: list[dict]) -> tuple[str, ...]:
  """pairs.csv's columns: PAIR_KEYS, then the per-pair metrics: the loss terms, the total, then the rest as
  recorded (extra metrics, the learnability check, the output's spread)."""
  terms, _ = run_terms(rows)
  recorded = dict.fromkeys(k for r in rows for k in r["per_pair"])
  return (*PAIR_KEYS, *terms, "total", *(k for k in recorded if k not in terms and k != "total"))


def pair_rows(rows: list[dict]) -> list[dict]:
  """pairs.csv's rows: every ticket's per-pair metrics, by branch, round, replicate and pair."""
  out = []
  for r in sorted(rows, key=lambda r: (branch_order(r["branch"]), r["round"], r["replicate"])):
    names = r.get("pair_names")
    for j in range(len(r["per_pair"]["total"])):
      name = names[j] if names else ""
      content, _, style = name.partition("__")
      out.append(dict(branch=r["branch"], round=r["round"], replicate=r["replicate"], pair=j, pair_name=name,
                      content_image=content, style_image=style, collapsed=collapsed(r) or "",
                      **{k: v[j] for k, v in r["per_pair"].items()}))
  return out


def pair_names(group: list[dict]) -> list[str] | None:
  """The evaluation pairs' names that all of `group`'s rows recorded, None when any row has none (every pair then
  counts as its own image combination); UserError when they disagree, since cells are paired by position."""
  names = [r.get("pair_names") for r in group]
  if any(n is None for n in names):
    return None
  if any(list(n) != list(names[0]) for n in names):
    raise UserError("The tickets were evaluated on differently named pairs; evaluate every network on the same "
                    "held-out pairs (the same config.eval and data settings) before comparing them.")
  return list(names[0])


def _losses(group: list[dict], metric: str) -> np.ndarray:
  return np.array([r["per_pair"][metric] for r in group], np.float64)


def collapsed(row: dict) -> str | None:
  """Why the ticket of a results row collapsed (evaluate.collapse_reason), or None."""
  return row.get("collapsed") or None


def summarize(rows: list[dict], tolerance: float) -> list[dict]:
  """One row per branch x round: the geometric mean ratio of held-out loss to the dense network minus 1, over
  replicates and image combinations, its interval and the verdict (stats.relative_difference_interval).

  Each ticket is paired with its own replicate's dense round on the same held-out pairs; a baseline is paired with
  IMP's ticket of the same replicate and round. Replicates without a dense round yet are left out.

  Collapsed runs are named, never averaged: a replicate whose dense round collapsed is left out of every comparison
  (counted in dense_collapsed), and a ticket that collapsed while its dense network did not is left out of its
  cell's interval (counted in collapsed); `replicates` counts the ones used. A cell with a collapsed ticket never
  matches, since dropping the tickets that died would flatter the rest: a match becomes inconclusive, and the row's
  'note' says why. Each row's 'collapsed_runs' lists the runs it left out (the reference row: the dense ones).
  """
  dense = {r["replicate"]: r for r in rows if r["branch"] == "imp" and r["round"] == 0}
  terms, _ = run_terms(rows)
  cells: dict[tuple[str, int], list[dict]] = {}
  for r in rows:
    if r["replicate"] in dense:
      cells.setdefault((r["branch"], r["round"]), []).append(r)
  out = []
  for (branch, round_), rs in sorted(cells.items(), key=lambda kv: (branch_order(kv[0][0]), kv[0][1])):
    rs = sorted(rs, key=lambda r: r["replicate"])
    reference = branch == "imp" and round_ == 0
    dropped = [r for r in rs if collapsed(dense[r["replicate"]])]  # their dense network died
    live = [r for r in rs if not collapsed(dense[r["replicate"]])]
    dead = [] if reference else [r for r in live if collapsed(r)]
    used = [r for r in live if not collapsed(r)]
    ref = [dense[r["replicate"]] for r in used]
    names = pair_names(rs + [dense[r["replicate"]] for r in rs])
    pairs = len(rs[0]["per_pair"]["total"])
    row = dict(branch=branch, round=round_, replicates=len(used), collapsed=len(dead), dense_collapsed=len(dropped),
               pairs=pairs, combinations=len(set(names)) if names is not None else pairs,
               collapsed_runs=[dict(branch=r["branch"], round=r["round"], replicate=r["replicate"],
                                    reason=collapsed(r), dense=reference) for r in (dropped if reference else dead)])
    for key in ("sparsity_prunable", "sparsity_total", "sparsity_inference"):
      row[key] = float(np.mean([r[key] for r in rs]))
    # With every run of the cell collapsed, the mean over all of them still says what they scored (replicates = 0
    # says they were left out).
    row["total"] = float(np.mean([r["total"] for r in (used or rs)]))
    for metric in ("total", *terms):
      if not all(metric in r["per_pair"] for r in rs + [dense[r["replicate"]] for r in rs]):
        continue
      if reference:  # the reference itself
        iv, verdict = None, ""
      elif not used:  # nothing left to compare: the columns stay, empty
        iv, verdict = None, stats.INCONCLUSIVE
      elif metric != "total" and (np.any(_losses(ref, metric) <= 0) or np.any(_losses(used, metric) <= 0)):
        continue  # a term driven to zero has no ratio; the total decides anyway
      else:
        iv = stats.relative_difference_interval(_losses(used, metric), _losses(ref, metric), pair_names=names,
                                                confidence=CONFIDENCE)
        verdict = stats.verdict(iv, tolerance)
      missing = 0.0 if reference else math.nan
      prefix = "" if metric == "total" else f"{metric}_"
      row[f"{prefix}relative_to_dense" if metric == "total" else f"{metric}_relative"] = iv.estimate if iv else missing
      row[f"{prefix}ci_low"] = iv.low if iv else missing
      row[f"{prefix}ci_high"] = iv.high if iv else missing
      if metric == "total":
        row["verdict"] = verdict
    notes = []
    if dead:
      notes.append(f"{len(dead)} of {len(live)} tickets collapsed")
      if row.get("verdict") == stats.MATCHES:
        row["verdict"] = stats.INCONCLUSIVE
    if not reference and len(used) < 2 and (dead or dropped):
      notes.append(f"{len(used)} usable replicate{'s' if len(used) != 1 else ''}")
    if notes:
      row["note"] = "; ".join(notes)
    _versus_imp(row, live, cells.get(("imp", round_), []))
    for key in LEARNABILITY:
      if used and all(key in r for r in used):
        row[key] = float(np.mean([r[key] for r in used]))
    if used and all(k in r for r in used for k in LEARNABILITY):
      # The learnability check holds for every replicate, not on average: the worst one decides.
      row["recon_margin_min"] = float(min(r["recon_psnr"] - r["flat_psnr"] for r in used))
    out.append(row)
  return out


def _versus_imp(row: dict, live: list[dict], imp_cell: list[dict]) -> None:
  """A baseline's vs_imp columns: baseline / IMP - 1 over the replicates where neither ticket collapsed. Dropping a
  collapsed ticket flatters its side, so a collapsed IMP ticket rules out 'imp better' and a collapsed baseline
  ticket 'imp worse'."""
  if row["branch"] == "imp":
    return
  imp_cells = {r["replicate"]: r for r in imp_cell}
  both = [r for r in live if r["replicate"] in imp_cells]
  paired = [r for r in both if not collapsed(r) and not collapsed(imp_cells[r["replicate"]])]
  if not paired:
    return
  imp_rows = [imp_cells[r["replicate"]] for r in paired]
  iv = stats.paired_difference_interval(_losses(paired, "total"), _losses(imp_rows, "total"),
                                        pair_names=pair_names(paired + imp_rows), confidence=CONFIDENCE)
  comparison = stats.comparison(iv)
  if (comparison == stats.IMP_BETTER and any(collapsed(imp_cells[r["replicate"]]) for r in both)) or (
      comparison == stats.IMP_WORSE and any(collapsed(r) for r in both)):
    comparison = stats.INCONCLUSIVE
  row.update(vs_imp=iv.estimate, vs_imp_ci_low=iv.low, vs_imp_ci_high=iv.high, vs_imp_verdict=comparison)


def collapsed_runs(summary: list[dict]) -> list[dict]:
  """Every run the summary left out: the collapsed dense rounds (dense: True, each dropping its replicate from every
  comparison) and the collapsed tickets, each with its branch, round, replicate and reason."""
  return [run for r in summary for run in r.get("collapsed_runs", ())]


def replicate_spread(rows: list[dict]) -> dict | None:
  """The per-replicate standard deviation of the mean log loss ratio (ticket / dense), what the replicate planner
  needs; None with fewer than two replicates.

  From IMP's pruned rounds with two or more replicates: each replicate's mean log ratio over image combinations,
  the variance over replicates pooled over rounds. A dense-only pilot (no pruned round with two replicates) has no
  ticket to compare: then sqrt(2) x the SD over replicates of log(mean dense loss), since a ticket-vs-dense
  difference spans two independent trainings. Collapsed runs (dense or ticket) are left out, as in the intervals.
  """
  dense = {r["replicate"]: r for r in rows if r["branch"] == "imp" and r["round"] == 0 and not collapsed(r)}
  squares, dof, rounds = 0.0, 0, 0
  for round_ in sorted({r["round"] for r in rows if r["branch"] == "imp" and r["round"] > 0}):
    rs = sorted((r for r in rows if r["branch"] == "imp" and r["round"] == round_ and r["replicate"] in dense
                 and not collapsed(r)), key=lambda r: r["replicate"])
    if len(rs) < 2:
      continue
    ref = [dense[r["replicate"]] for r in rs]
    means = stats.replicate_log_means(_losses(rs, "total"), _losses(ref, "total"), pair_names(rs + ref))
    squares += float(np.sum((means - means.mean()) ** 2))
    dof += len(rs) - 1
    rounds += 1
  if dof:
    return dict(sd=math.sqrt(squares / dof), source="pruned", rounds=rounds, df=dof)
  if len(dense) >= 2:
    logs = [math.log(float(np.mean(r["per_pair"]["total"]))) for r in dense.values()]
    return dict(sd=math.sqrt(2.0) * float(np.std(logs, ddof=1)), source="dense", rounds=0, df=len(logs) - 1)
  return None


def tolerance_key(t: float) -> str:
  """A tolerance as summary.json names it: '2%', or '2.5%' when a whole percent would round it."""
  return f"{t:.0%}" if abs(100 * t - round(100 * t)) < 1e-9 else f"{t:.1%}"


def replicates_planned(sd: float, tolerance: float) -> dict[float, int]:
  """{tolerance: replicates needed} at this spread for 2%, 10% and the run's own tolerance."""
  tolerances = sorted({*PLANNED_TOLERANCES, *([round(float(tolerance), 9)] if tolerance > 0 else [])})
  return {t: stats.replicates_needed(sd, t, PLANNED_POWER, CONFIDENCE) for t in tolerances}


def dense_learnability(summary: list[dict]) -> dict | None:
  """The dense round's learnability check over its replicates that did not collapse: their mean recon_psnr and
  flat_psnr (None when none is left), how many, the worst replicate's margin over its flat image (worst_margin),
  whether every one of them reconstructs at least LEARNED_MARGIN_DB better than a flat image, and the collapsed
  ones ('collapsed': replicate and reason); None when not recorded."""
  dense = next((r for r in summary if r["branch"] == "imp" and r["round"] == 0), None)
  if dense is None:
    return None
  dead = [dict(replicate=c["replicate"], reason=c["reason"]) for c in dense.get("collapsed_runs", ())]
  if all(k in dense for k in LEARNABILITY):
    recon, flat = dense["recon_psnr"], dense["flat_psnr"]
    worst = dense.get("recon_margin_min", recon - flat)
    return dict(recon_psnr=recon, flat_psnr=flat, replicates=dense["replicates"], worst_margin=worst,
                learned=bool(worst >= LEARNED_MARGIN_DB), collapsed=dead)
  if dead and not dense["replicates"]:  # every dense network collapsed: nothing learned to report
    return dict(recon_psnr=None, flat_psnr=None, replicates=0, learned=False, collapsed=dead)
  return None


def highest_matching(summary: list[dict]) -> dict[str, tuple[dict | None, dict | None]]:
  """Per branch: (the conservative highest matching round, the sparsest matching round) of summary rows."""
  out = {}
  for branch in sorted({r["branch"] for r in summary}, key=branch_order):
    out[branch] = stats.highest_matching([r for r in summary if r["branch"] == branch and r["round"] > 0])
  return out


def _brief(row: dict | None) -> dict | None:
  keys = ("round", "sparsity_prunable", "sparsity_total", "sparsity_inference", "relative_to_dense", "ci_low",
          "ci_high", "replicates", "collapsed", "dense_collapsed", "pairs", "combinations")
  return None if row is None else {k: row[k] for k in keys}


def write_results(workdir: str, model: str, protocol, skips: dict | None = None) -> tuple[list[dict], list[dict]]:
  """results.csv, summary.csv, summary.json and pairs.csv from the saved tickets of a run of `model` under
  `protocol` (a settings.Protocol), process 0 writing; returns (rows, summary).

  `skips` is a data.SkipLog summary; None reads the workdir's record of unreadable images.
  """
  rows = collect_rows(workdir)
  summary = summarize(rows, protocol.match_tolerance)
  if jax.process_index() != 0:
    return rows, summary
  terms, extra = run_terms(rows)
  _write_csv(os.path.join(workdir, workdir_lib.RESULTS_CSV), result_fields(terms, extra, learnability=True), rows)
  _write_csv(os.path.join(workdir, workdir_lib.SUMMARY_CSV), summary_fields(terms), summary)
  _write_csv(os.path.join(workdir, workdir_lib.PAIRS_CSV), pair_fields(rows), pair_rows(rows), value=_exact_value)
  if skips is None:
    skips = workdir_lib.load_skips(workdir)
  best = highest_matching(summary)
  spread = replicate_spread(rows)
  checkpoint.save_json(os.path.join(workdir, workdir_lib.SUMMARY_JSON), {
      "model": model, "terms": list(terms), "match_tolerance": protocol.match_tolerance,
      "confidence": CONFIDENCE, "estimator": ESTIMATOR,
      "rule": match_rule(protocol.match_tolerance),
      "replicates": sorted({r["replicate"] for r in rows}), "replicates_configured": protocol.replicates,
      "highest_matching": {b: _brief(c) for b, (c, _) in best.items()},
      "sparsest_matching": {b: _brief(s) for b, (c, s) in best.items() if s is not c},
      "sparsest_matching_note": SPARSEST_NOTE,
      "replicate_spread": None if spread is None else {
          **spread, "power": PLANNED_POWER,
          "replicates_needed": {tolerance_key(t): n for t, n in replicates_planned(spread["sd"],
                                                                               protocol.match_tolerance).items()}},
      "skipped_images": {"count": skips.get("count", 0), "first": skips.get("first", [])},
      # The runs left out of the intervals: collapsed dense rounds (dense: true) and collapsed tickets.
      "collapsed": collapsed_runs(summary),
      # Per replicate: the dense round's step where the mask settled (None: it trained to the end), and the
      # [step, distance to the previous check's mask] history.
      **({"early_bird": [{"replicate": r["replicate"], "early_bird_step": r.get("early_bird_step"),
                          "steps_trained": r["steps"], "history": r.get("early_bird_history", [])}
                         for r in rows if r["branch"] == "imp" and r["round"] == 0]}
         if protocol.early_bird is not None else {})})
  return rows, summary


def match_rule(tolerance: float) -> str:
  return MATCH_RULE.format(conf=CONFIDENCE, tol=tolerance)


# ----------------------------------------------------------------------------- stability (jaxtickets.stability)

def _path_columns(points: int) -> list[str]:
  return [f"loss_at_{a:.2f}" for a in np.linspace(0.0, 1.0, points)]


def write_stability_csv(path: str, rows: list[dict]) -> None:
  """stability.csv: one row per measured round, the path's losses as loss_at_<alpha> columns."""
  columns = _path_columns(len(rows[0]["path"])) if rows else []
  text = io.StringIO(newline="")
  writer = csv.writer(text)
  writer.writerow(["round", "replicate", "sparsity", "rewind_step", "barrier", "barrier_relative", "barrier_linear",
                   *columns])
  for r in rows:
    writer.writerow([r["round"], r["replicate"], f"{r['sparsity']:.6f}", r["rewind_step"], f"{r['barrier']:.6g}",
                     f"{r['barrier_relative']:.6g}", f"{r['barrier_linear']:.6g}", *(f"{x:.6g}" for x in r["path"])])
  storage.write_atomically(path, text.getvalue())


def read_stability_csv(path: str) -> list[dict]:
  """stability.csv's rows, the path's losses as one list under 'path'."""
  rows = list(csv.DictReader(io.StringIO(storage.read_text(path), newline="")))
  out = []
  for r in rows:
    path_keys = [k for k in r if k.startswith("loss_at_")]
    out.append({"round": int(r["round"]), "replicate": int(r["replicate"]), "sparsity": float(r["sparsity"]),
                "rewind_step": int(r["rewind_step"]), "barrier": float(r["barrier"]),
                "barrier_relative": float(r["barrier_relative"]),
                "barrier_linear": float(r.get("barrier_linear") or "nan"), "path": [float(r[k]) for k in path_keys]})
  return out


def stability_rows(workdir: str) -> list[dict]:
  """The run's stability.csv rows; none when its stability was not measured."""
  path = os.path.join(workdir, workdir_lib.STABILITY_CSV)
  return read_stability_csv(path) if storage.exists(path) else []


# ----------------------------------------------------------------------------- early bird against full IMP (the study)

def early_bird_comparison(bird: list[dict], reference: list[dict]) -> list[dict]:
  """Each IMP round of an early-bird run against the IMP round of the same number (so the same sparsity) of the
  run it is judged against, paired by replicate and held-out pair, over the replicates both have.

  Per round: the early-bird run's sparsity, both mean total losses, the geometric mean ratio of held-out loss
  (early bird / IMP) - 1 with its interval ('interval', a stats.Interval; None when every pair of tickets had one
  collapse) and stats.comparison of it, the replicates left out because a ticket of theirs collapsed ('collapsed'),
  and the mean training steps each run spent up to that round. As in summarize, a collapsed ticket never enters
  the interval and rules out the comparison that dropping it would flatter.
  """
  pick = lambda rows, r: {x["replicate"]: x for x in rows if x["branch"] == "imp" and x["round"] == r}
  spent = lambda rows, r: float(np.mean([sum(x["steps"] for x in rows if x["branch"] == "imp" and x["round"] <= r
                                             and x["replicate"] == rep) for rep in {x["replicate"] for x in rows}]))
  out = []
  for r in sorted({x["round"] for x in bird if x["branch"] == "imp"}):
    a, b = pick(bird, r), pick(reference, r)
    common = sorted(set(a) & set(b))
    if not common:
      continue
    reps = [rep for rep in common if not collapsed(a[rep]) and not collapsed(b[rep])]
    grid = lambda rows: np.array([rows[rep]["per_pair"]["total"] for rep in reps])
    interval, comparison = None, stats.INCONCLUSIVE
    if reps:
      interval = stats.paired_difference_interval(grid(a), grid(b), pair_names=a[reps[0]].get("pair_names"),
                                                  confidence=CONFIDENCE)
      comparison = stats.comparison(interval)
      if (comparison == stats.IMP_BETTER and any(collapsed(b[rep]) for rep in common)) or (
          comparison == stats.IMP_WORSE and any(collapsed(a[rep]) for rep in common)):
        comparison = stats.INCONCLUSIVE
    out.append(dict(round=r, sparsity_prunable=a[common[0]]["sparsity_prunable"],
                    imp_total=float(np.mean(grid(b))) if reps else math.nan,
                    early_bird_total=float(np.mean(grid(a))) if reps else math.nan, interval=interval,
                    comparison=comparison, collapsed=len(common) - len(reps), imp_steps=spent(reference, r),
                    early_bird_steps=spent(bird, r)))
  return out
