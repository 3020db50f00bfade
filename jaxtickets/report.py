"""The evidence of a run: python -m jaxtickets.report --workdir=DIR (main runs it at the end, too).

Writes into the workdir (process 0 only):
  results.csv, summary.csv, summary.json   rebuilt from the saved tickets (results.write_results)
  curves.png     the geometric mean ratio of held-out loss (ticket / dense) - 1 over replicates and image
                 combinations, in the total loss and in each of the model's loss terms (one panel each) vs sparsity,
                 one line per branch with its 95% interval as a band, the tolerance as a line, each branch's highest
                 matching sparsity starred
  layers.png     per-layer sparsity of replicate 0's final IMP ticket (which layers IMP empties first)
  grid.png       rows = held-out content/style pairs, columns = content, style, dense and each IMP round (rep 0)
  report.md      the settings (replicates, pairs, rewind point), the verdicts, the dense round's learnability check,
                 the replicate spread and the replicates it calls for, IMP vs each baseline, the figures

The one place that turns results into words and pictures: results.py and stats.py compute, this module renders.
It also draws stability.png for jaxtickets.stability, writes the study's study.md, study.png and rewind.png for
jaxtickets.study (write_study), and words the verdicts a run logs when it ends (format_summary, matching_lines).
"""

import math
import os
import sys

from absl import app, flags
import jax
import numpy as np
import matplotlib.ticker
from matplotlib.figure import Figure
from tqdm import tqdm

from jaxtickets import checkpoint, config as config_lib, results, storage, workdir as workdir_lib
from jaxtickets.errors import UserError

MAX_GRID_ROWS = 8
MAX_CURVE_COLUMNS = 4  # panels per row of curves.png (MCCNet has six terms)
_GROUP_COLORS = {"encoder": "tab:blue", "decoder": "tab:orange", "transform": "tab:green"}


# ----------------------------------------------------------------------------- formatting shared by every output

def table(header: list[str], lines: list[list]) -> str:
  """A markdown table; the cells are written as str() writes them."""
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return "\n".join(out + ["| " + " | ".join(str(c) for c in line) + " |" for line in lines])


def pct(v) -> str:
  """A signed percentage with two decimals ('+1.25%'); empty when there is no value."""
  return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.2%}"


def interval_text(low, high) -> str:
  return f"[{pct(low)}, {pct(high)}]"


# ----------------------------------------------------------------------------- a run's answer in words

def matching_lines(summary: list[dict], tolerance: float) -> list[str]:
  """The run's answer in words: the highest matching sparsity per branch (and the exploratory sparsest, if it
  differs)."""
  lines = []
  for branch, (best, sparsest) in results.highest_matching(summary).items():
    if best is None:
      counts = {}
      for r in summary:
        if r["branch"] == branch and r["round"] > 0:
          counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
      said = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
      lines.append(f"Highest matching sparsity ({branch}): none; no pruned round has its whole interval below "
                   f"+{tolerance:.1%} together with every round before it ({said}).")
    else:
      lines.append(f"Highest matching sparsity ({branch}): {best['sparsity_prunable']:.4f} of the prunable weights "
                   f"({best['sparsity_inference']:.4f} of the inference network), round {best['round']}: it and "
                   f"every round below it match ({best['replicates']} replicates x {best['pairs']} pairs, "
                   f"{best['combinations']} image combinations).")
    if sparsest is not None and sparsest is not best:
      lines.append(f"  Exploratory, not the answer: the sparsest matching round ({branch}) is round "
                   f"{sparsest['round']} at {sparsest['sparsity_prunable']:.4f}, but a round below it does not "
                   "match, and picking the best of many tests does not keep the interval's confidence.")
  return lines


def learnability_lines(summary: list[dict]) -> list[str]:
  """The dense round's learnability check in words, with a warning when it has not learned to reconstruct."""
  check = results.dense_learnability(summary)
  if check is None:
    return []
  dead = "; ".join(f"replicate {c['replicate']} ({c['reason']})" for c in check["collapsed"])
  if check["recon_psnr"] is None:
    return [f"Dense round: every dense network collapsed ({dead}): there is nothing to compare the tickets with."]
  lines = [f"Dense round: reconstruction PSNR {check['recon_psnr']:.2f} dB against {check['flat_psnr']:.2f} dB for "
           "a flat mean-colour image (held-out content stylized with itself as the style, mean over "
           f"{check['replicates']} replicate(s), the lowest {check['worst_margin']:+.2f} dB from its flat image"
           + (f"; left out, collapsed: {dead}" if dead else "") + ")."]
  if not check["learned"]:
    lines.append(f"WARNING: the dense network has not learned to reconstruct its content in every replicate (less "
                 f"than {results.LEARNED_MARGIN_DB:.0f} dB above a flat image): verdicts about its tickets say little "
                 "about style transfer.")
  return lines


def planner_lines(rows: list[dict], tolerance: float) -> list[str]:
  """The measured replicate spread in words, and the replicates a 2%, a 10% and the run's tolerance call for."""
  spread = results.replicate_spread(rows)
  if spread is None:
    return ["Replicate spread: unmeasured with one replicate; run at least 2 to plan how many a verdict needs."]
  if spread["source"] == "pruned":
    how = (f"pooled over IMP's {spread['rounds']} pruned round(s) with 2 or more replicates ({spread['df']} degrees "
           "of freedom)")
  else:
    how = (f"from the dense rounds alone (a dense-only pilot, or no pruned round with 2 replicates yet): sqrt(2) x "
           f"the SD over {spread['df'] + 1} replicates of log(mean dense loss), the spread of a difference between "
           "two independent trainings")
  needs = ", ".join(f"{results.tolerance_key(t)} needs {n}"
                    for t, n in results.replicates_planned(spread["sd"], tolerance).items())
  return [f"Replicate spread: the per-replicate SD of the mean log loss ratio (ticket / dense) is {spread['sd']:.4f}, "
          f"{how}.",
          f"At this spread, for a ticket as good as its dense network to match with {results.PLANNED_POWER:.0%} power "
          f"({results.CONFIDENCE:.0%} intervals): {needs} replicates."]


def format_summary(summary: list[dict]) -> str:
  """The verdict table a run logs when it ends, what its columns mean, and the dense round's learnability."""
  head = (f"{'branch':<14}{'round':>6}{'sparsity':>10}{'reps':>6}{'pairs':>7}{'total':>10}{'vs dense':>10}"
          f"{'95% interval':>28}  verdict")
  lines = [head, "-" * len(head)]
  for r in summary:
    lines.append(f"{r['branch']:<14}{r['round']:>6}{r['sparsity_prunable']:>10.4f}{r['replicates']:>6}{r['pairs']:>7}"
                 f"{r['total']:>10.4f}{pct(r['relative_to_dense']):>10}{_interval_cell(r):>28}  "
                 f"{verdict_text(r)}")
  lines.append(f"vs dense: the {results.ESTIMATOR}; reps: the replicates it rests on, collapsed runs left out.")
  dead = collapsed_line(summary)
  return "\n".join(lines + ([dead] if dead else []) + learnability_lines(summary))


def _interval_cell(r: dict) -> str:
  """A summary row's interval as text; empty for the dense reference and when no replicate was left to compare."""
  if not r["verdict"] or math.isnan(r["ci_low"]):
    return ""
  return interval_text(r["ci_low"], r["ci_high"])


def verdict_text(r: dict) -> str:
  """A summary row's verdict, with why it rests on fewer replicates when runs collapsed (e.g. 'inconclusive (1 of
  3 tickets collapsed)')."""
  verdict = r["verdict"] or "(dense reference)"
  return f"{verdict} ({r['note']})" if r.get("note") else verdict


def collapsed_line(summary: list[dict]) -> str | None:
  """The runs left out of the intervals in one line, collapsed tickets first; None when none collapsed."""
  runs = results.collapsed_runs(summary)
  if not runs:
    return None
  tickets = [f"{c['branch']} round {c['round']} replicate {c['replicate']} ({c['reason']})"
             for c in runs if not c["dense"]]
  dense = [f"dense replicate {c['replicate']} ({c['reason']}: all its comparisons dropped)"
           for c in runs if c["dense"]]
  return "Collapsed (excluded from the intervals): " + "; ".join(tickets + dense)


# ----------------------------------------------------------------------------- a run's figures


def _by_branch(summary: list[dict]) -> dict[str, list[dict]]:
  """Summary rows per branch by round; every branch starts at the dense round it was pruned from."""
  dense = [r for r in summary if r["branch"] == "imp" and r["round"] == 0]
  out = {}
  for r in summary:
    out.setdefault(r["branch"], []).append(r)
  return {b: sorted((dense if b != "imp" else []) + rs, key=lambda r: r["round"]) for b, rs in out.items()}


_VERDICT_MARKERS = {"matches": dict(marker="o"), "does not match": dict(marker="X"),
                    "inconclusive": dict(marker="o", mfc="white"), "": dict(marker="s")}


def plot_curves(summary: list[dict], tolerance: float, path: str, title: str = "", *,
                terms: tuple[str, ...]) -> None:
  """One panel for the total and one per loss term in `terms`: the geometric mean ratio of held-out loss
  (ticket / dense) - 1 vs prunable sparsity, per branch, with its 95% interval as a band; filled dots match, hollow
  ones are inconclusive, crosses do not match."""
  metrics = ("total", *terms)
  cols = min(len(metrics), MAX_CURVE_COLUMNS)
  rows = math.ceil(len(metrics) / cols)
  fig = Figure(figsize=(5 * cols, 5.2 * rows), layout="constrained")
  grid = np.asarray(fig.subplots(rows, cols, squeeze=False)).ravel()
  axes = grid[:len(metrics)]
  for ax in grid[len(metrics):]:
    ax.set_visible(False)
  best = results.highest_matching(summary)
  # The ratio on a log axis: its intervals are symmetric there (they come from log ratios), and a band reaching
  # thousands of percent at two replicates cannot flatten the estimates into a line at 0.
  ratio = lambda v: 1.0 + v
  percent = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y - 1:+.0%}")
  for ax, metric in zip(axes, metrics):
    rel, low, high = (("relative_to_dense", "ci_low", "ci_high") if metric == "total" else
                      (f"{metric}_relative", f"{metric}_ci_low", f"{metric}_ci_high"))
    ax.set_yscale("log")
    ax.axhline(1.0, color="0.5", lw=1)
    shown = [1.0]
    if metric == "total":
      ax.axhline(ratio(tolerance), color="k", ls="--", lw=1, label=f"tolerance +{tolerance:.1%}")
      shown.append(ratio(tolerance))
    for i, (branch, rs) in enumerate(_by_branch(summary).items()):
      rs = [r for r in rs if rel in r]
      if not rs:
        continue
      color = f"C{i}"
      x = [100 * r["sparsity_prunable"] for r in rs]
      # A band reaching 0 (the -100% end) has no place on a log axis: it is drawn down to the frame instead.
      ax.fill_between(x, [max(ratio(r[low]), 1e-9) for r in rs], [ratio(r[high]) for r in rs], color=color,
                      alpha=0.18, lw=0)
      ax.plot(x, [ratio(r[rel]) for r in rs], "-", color=color, label=branch)
      shown += [ratio(r[rel]) for r in rs if math.isfinite(r[rel])]  # no estimate: every replicate collapsed
      for r, xi in zip(rs, x):
        ax.plot(xi, ratio(r[rel]), color=color, ms=6, ls="", **_VERDICT_MARKERS.get(r.get("verdict", ""), {}))
      b = best.get(branch, (None, None))[0]
      if b is not None and metric == "total":
        ax.plot(100 * b["sparsity_prunable"], ratio(b[rel]), "*", color=color, ms=16, mec="k",
                label=f"{branch}: highest matching {b['sparsity_prunable']:.1%}")
    # The view follows the estimates (a factor of 3 around them), so the bands are cut at its frame, not the other
    # way round.
    ax.set_ylim(max(min(shown), 1e-6) / 3.0, max(shown) * 3.0)
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))  # -50%, +100%, ... between decades
    ax.yaxis.set_major_formatter(percent)
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel(f"{metric} loss: ticket / dense - 1 (geometric mean, log scale)")
    ax.set_title(f"{metric} loss" + (" (matches: whole interval below the tolerance)" if metric == "total" else ""))
    ax.grid(alpha=0.3, which="both")
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
  if title:
    fig.suptitle(title)
  storage.save_figure(fig, path, dpi=100)


def plot_early_bird(rows: list[dict], epsilon: float, path: str) -> None:
  """Distance between consecutive drawn masks against the dense round's step, per replicate."""
  fig = Figure(figsize=(6.5, 4), layout="constrained")
  ax = fig.subplots()
  ax.axhline(epsilon, color="k", ls="--", lw=1, label=f"epsilon {epsilon:g}")
  for r in rows:
    history = r.get("early_bird_history") or []
    if history:
      ax.plot([h[0] for h in history], [h[1] for h in history], "o-", ms=3, label=f"replicate {r['replicate']}")
    if r.get("early_bird_step") is not None:
      ax.axvline(r["early_bird_step"], color="0.6", lw=1)
  ax.set_xlabel("dense round step")
  ax.set_ylabel("mask distance (1 = two unrelated masks)")
  ax.legend(fontsize=8)
  storage.save_figure(fig, path, dpi=110)


def plot_layers(report: dict, path: str, title: str) -> None:
  """Horizontal bars: the sparsity of every prunable layer, colored by group, with the overall sparsity."""
  layers = report["layers"]
  names = list(layers)
  fig = Figure(figsize=(9, 1.5 + 0.28 * len(names)), layout="constrained")
  ax = fig.subplots()
  y = np.arange(len(names))[::-1]
  colors = [_GROUP_COLORS.get(n.split("/")[0], "tab:gray") for n in names]
  values = [layers[n]["sparsity"] for n in names]
  ax.barh(y, values, color=colors)
  for yi, n, v in zip(y, names, values):
    ax.text(min(v, 1.0) + 0.01, yi, f"{v:.1%} of {layers[n]['size']:,}", va="center", fontsize=7)
  ax.axvline(report["prunable"]["sparsity"], color="k", ls="--", lw=1,
             label=f"all prunable: {report['prunable']['sparsity']:.1%}")
  ax.set_yticks(y, [n.removesuffix("/kernel") for n in names], fontsize=8)
  ax.set_xlim(0, 1.25)
  ax.set_xlabel("sparsity (fraction of the layer's weights pruned)")
  ax.set_title(title)
  ax.legend(loc="lower right", fontsize=8)
  storage.save_figure(fig, path, dpi=100)


def plot_grid(config, imp_rows: list[dict], workdir: str, path: str) -> None:
  """Rows = held-out pairs, columns = content, style, the dense network's reconstruction (the content stylized with
  itself as the style: what the learnability check scores), dense and each IMP round's ticket."""
  from jaxtickets import data, evaluate, inference

  pairs = data.eval_pairs(config)
  n = min(len(pairs["content"]), MAX_GRID_ROWS)
  pairs = {"content": pairs["content"][:n], "style": pairs["style"][:n], "names": pairs["names"][:n]}
  model, vgg = inference.model_and_vgg(config)
  columns = [("content", pairs["content"]), ("style", pairs["style"])]
  for r in tqdm(imp_rows, desc="report grid", unit="round", disable=None, leave=False):
    ticket = checkpoint.load_ticket(workdir_lib.ticket_dir(workdir, "imp", r["round"], r["replicate"]))
    out = evaluate.stylize_pairs(model, ticket.trained_params, ticket.masks, vgg, pairs)
    if r["round"] == 0:
      itself = {"content": pairs["content"], "style": pairs["content"]}
      columns.append(("dense, content\nas its own style", evaluate.stylize_pairs(model, ticket.trained_params,
                                                                                  ticket.masks, vgg, itself)))
    label = "dense" if r["round"] == 0 else f"round {r['round']}\n{r['sparsity_prunable']:.1%} sparse"
    columns.append((label, out))
  cell = 1.6
  fig = Figure(figsize=(cell * len(columns), cell * n + 0.5), layout="constrained")
  axes = np.asarray(fig.subplots(n, len(columns), squeeze=False))
  for j, (label, images) in enumerate(columns):
    for i in range(n):
      ax = axes[i, j]
      ax.imshow(np.clip(images[i], 0, 1))
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(label, fontsize=9)
      if j == 0:
        ax.set_ylabel(pairs["names"][i].replace("__", "\n"), fontsize=7)
  storage.save_figure(fig, path, dpi=100)


def plot_stability(rows: list[dict], path: str, title: str = "") -> None:
  """stability.png. Left: the loss along the path per round. Right: the relative barrier against sparsity."""
  fig = Figure(figsize=(11, 4.4), layout="constrained")
  left, right = fig.subplots(1, 2)
  for i, r in enumerate(rows):
    alphas = np.linspace(0.0, 1.0, len(r["path"]))
    left.plot(alphas, r["path"], marker=".", color=f"C{i}", label=f"round {r['round']} ({r['sparsity']:.1%})")
  left.set_xlabel("interpolation alpha (copy a -> copy b)")
  left.set_ylabel("held-out total loss")
  left.legend(fontsize=8)
  right.axhline(0.0, color="0.5", lw=1)
  right.plot([100 * r["sparsity"] for r in rows], [100 * r["barrier_relative"] for r in rows], marker="o")
  right.set_xlabel("sparsity of the prunable weights (%)")
  right.set_ylabel("error barrier (% of the ends' mean loss)")
  fig.suptitle(title or "Linear mode connectivity: two copies of each round's start, other data orders")
  storage.save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------- report.md

def _fmt(value, key: str) -> str:
  if value is None:
    return ""
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, int):
    return f"{value:,}" if key.startswith("remaining") else str(value)
  if key == "relative_to_dense":
    return f"{value:+.2%}"
  if key in results.LEARNABILITY:
    return f"{value:.2f}"
  return f"{value:.4f}" if key.startswith("sparsity") else f"{value:.6g}"


def format_markdown(config, rows: list[dict], summary: list[dict], workdir: str, figures: dict,
                    notes: list[str]) -> str:
  """report.md: settings, the verdicts with intervals, IMP vs the baselines, figures, all results."""
  m, sp, ip = config.model, config.sparsity, config.imp
  dense = [r for r in rows if r["branch"] == "imp" and r["round"] == 0]
  reps = sorted({r["replicate"] for r in rows})
  pairs = sorted({len(r["per_pair"]["total"]) for r in rows})
  combos = sorted({r["combinations"] for r in summary})
  done = max((r["round"] for r in rows if r["branch"] == "imp"), default=0)
  vgg = (f"`demo`: the demo loss network, {config_lib.DEMO_VGG_DESCRIPTION}" if m.vgg_weights == config_lib.DEMO_VGG
         else f"`{m.vgg_weights}`" if m.vgg_weights else
         "**random** (no pretrained VGG: the losses are not meaningful)")
  from jaxtickets import weights  # pylint: disable=g-import-not-at-top
  vgg += weights.vgg_record_note(workdir)  # its SHA-256 and whether it is the released file (the run's vgg.json)
  rewinds = sorted({r["rewind_step"] for r in rows})
  rewind = ", ".join("0 (the initial weights)" if k == 0 else f"{k} (the weights after {k} dense steps)"
                     for k in rewinds)
  cap = f", no layer pruned beyond {sp.layer_cap:.0%}" if sp.layer_cap < 1.0 else ""
  settings = [
      ["model", f"{m.name} (width {m.width:g}, {m.dtype})"],
      ["encoder", "trained (part of the pruned network)" if m.train_encoder else "fixed (the frozen VGG)"],
      ["VGG weights", vgg],
      ["deviations from the reference", "; ".join(reference_deviations(config)) or "none"],
      ["pruning scope", f"`{sp.scope}` ({sp.method} magnitude, {sp.fraction:.0%} of the remaining weights per "
                        f"round{cap})"],
      ["rewind point used", rewind],
      ["rounds", f"{done} pruned round(s) done of {ip.rounds} configured; {config.train.steps:,} steps per round"],
      ["replicates", f"{len(reps)} done of {ip.replicates} configured (seeds {config.seed} + r); each "
                     f"point rests on {len(reps)} replicate(s) x {', '.join(map(str, pairs))} held-out pairs "
                     f"({', '.join(map(str, combos))} image combinations, the units the pairs' crops are averaged "
                     "into)" + ("; collapsed runs are left out (the verdicts count the replicates used)"
                                if results.collapsed_runs(summary) else "")],
      ["branches", _branches_line(config, rows)],
      ["matching", results.match_rule(ip.match_tolerance)],
  ]
  if dense:
    settings.append(["parameters (dense)", f"{dense[0]['remaining_total']:,} in all, "
                                           f"{dense[0]['remaining_prunable']:,} prunable"])
  text = [f"# Lottery tickets of {m.name}", "", f"Workdir `{workdir}`, made by `python -m jaxtickets.report`.", "",
          table(["setting", "value"], settings), "", "## Highest matching sparsity", ""]
  text += [f"- {line.strip()}" for line in matching_lines(summary, ip.match_tolerance)] + [""]
  learn = learnability_lines(summary)
  if learn:
    psnr = [r for r in summary if all(k in r for k in results.LEARNABILITY)]
    text += ["## Learnability", ""] + [f"- {line}" for line in learn] + [
        "", "Reconstruction PSNR (the held-out content stylized with itself as the style) against a flat mean-colour "
        "image of it, in dB, mean over replicates:", "",
        table(["branch", "round", "sparsity", "reconstruction PSNR", "flat image PSNR"],
               [[r["branch"], str(r["round"]), f"{r['sparsity_prunable']:.4f}", f"{r['recon_psnr']:.2f}",
                 f"{r['flat_psnr']:.2f}"] for r in psnr]), ""]
  text += ["## Replicates needed", ""] + [f"- {line}" for line in planner_lines(rows, ip.match_tolerance)]
  text += [""]
  terms, extra = results.run_terms(rows)
  # The terms' own differences share the last column ('content / style vs dense' for most models).
  by_term = [f"{' / '.join(terms)} vs dense"] if terms else []
  cells = lambda r: [" / ".join(pct(r.get(f"{t}_relative")) for t in terms)] if terms else []
  lines = [[r["branch"], str(r["round"]), f"{r['sparsity_prunable']:.4f}", f"{r['sparsity_inference']:.4f}",
            f"{r['replicates']} x {r['pairs']} ({r['combinations']})", f"{r['total']:.6g}",
            pct(r["relative_to_dense"]), _interval_cell(r), verdict_text(r), *cells(r)] for r in summary]
  dead = collapsed_line(summary)
  text += ["## Verdicts (summary.csv)", "",
           f"Ticket / dense - 1: the {results.ESTIMATOR} (summary.csv's relative_to_dense), each ticket paired "
           "with its own replicate's dense round on the same held-out pairs; the interval and the verdict as in "
           "the match rule above. Replicates: those the verdict rests on, collapsed runs left out. Total loss: the "
           "mean over those replicates and pairs.", "",
           *([f"- {dead}", ""] if dead else []),
           table(["branch", "round", "sparsity (prunable)", "sparsity (inference)",
                   "replicates x pairs (image combinations)", "total loss", "ticket / dense - 1 (geometric mean)",
                   "95% interval", "verdict", *by_term], lines), ""]
  vs = [r for r in summary if "vs_imp" in r]
  if vs:
    text += ["## IMP against each baseline at the same round", "",
             "The geometric mean ratio of held-out total loss (baseline / IMP at the same replicate and round) - 1, "
             "over replicates and image combinations, paired by replicate and pair: above zero means IMP's ticket "
             "is better.", "",
             table(["branch", "round", "sparsity", "baseline / IMP - 1 (geometric mean)", "95% interval",
                     "comparison"],
                    [[r["branch"], str(r["round"]), f"{r['sparsity_prunable']:.4f}", pct(r["vs_imp"]),
                      interval_text(r["vs_imp_ci_low"], r["vs_imp_ci_high"]), r["vs_imp_verdict"]]
                     for r in vs]), ""]
  captions = {"curves": "Quality vs sparsity with 95% intervals (the dashed line is the tolerance)",
              "layers": "Per-layer sparsity of the final IMP ticket (replicate 0)",
              "grid": "Held-out pairs: content, style, dense, then each IMP round (replicate 0)",
              "early_bird": "Early bird: distance between consecutive drawn masks during the dense round"}
  birds = [r for r in rows if r["branch"] == "imp" and r["round"] == 0 and "early_bird_step" in r]
  if config.imp.early_bird:
    text += ["## Early bird", "",
             f"The dense round drew the mask pruning would give every {config.imp.early_bird_every} steps and stopped "
             f"once consecutive masks differed in less than {config.imp.early_bird_epsilon:.1%} of the prunable "
             f"weights for {config.imp.early_bird_patience} draws in a row. The dense round is the verdicts' "
             "reference, so an early-stopped one is a weaker reference: the study's early_bird comparison judges "
             "these tickets against full IMP instead.", "",
             table(["replicate", "stopped at step", "steps trained", "of"],
                    [[str(r["replicate"]), str(r["early_bird_step"]), str(r["steps"]), str(config.train.steps)]
                     for r in birds]) if birds else "No dense round stopped early: the masks never settled.", ""]
  text += ["## Figures", ""]
  for key, name in figures.items():
    text += [f"### {captions[key]}", "", f"![{captions[key]}]({name})", ""]
  text += [f"- {n}" for n in notes] + ([""] if notes else [])
  keys = [k for k in results.result_fields(terms, extra, learnability=True) if any(k in r for r in rows)]
  text += ["## All results (results.csv)", "",
           "One row per ticket; relative_to_dense here is this ticket's mean total loss over its own replicate's "
           "dense round's, minus 1 (one replicate, a ratio of means), not the verdicts' estimate.", "",
           table(keys, [[_fmt(r.get(k, ""), k) for k in keys] for r in rows]), ""]
  return "\n".join(text)


def reference_deviations(config) -> list[str]:
  """Each model setting of the run that differs from the reference implementation's, in words."""
  from jaxtickets import models  # pylint: disable=import-outside-toplevel  (imports the model's module)
  m = config.model
  model_class = models.get_model(m.name)
  out = []
  if m.width != 1.0:
    out.append(f"width {m.width:g} (the reference: 1)")
  if not m.train_encoder:
    out.append("encoder fixed, the loss VGG itself (the paper trains it)")
  if m.get("decoder_init", "reference") != "reference":
    out.append(f"decoder init {m.decoder_init} (the reference: its own, PyTorch's default for the shared decoder)")
  for term, reference in model_class.loss_weights.items():
    value = m.get(f"{term}_weight")
    if value is not None and float(value) != float(reference):
      out.append(f"{term} weight {float(value):g} (the reference: {float(reference):g})")
  taps = m.get("content_taps")
  if taps and taps != "r41" and m.name == "adain":
    out.append(f"content taps {taps} (the reference: r41)")
  if m.vgg_weights == config_lib.DEMO_VGG:
    out.append("loss network trained here, not ImageNet's VGG")
  elif not m.vgg_weights:
    out.append("random loss VGG")
  return out


def _branches_line(config, rows) -> str:
  done = sorted({r["branch"] for r in rows}, key=results.branch_order)
  wanted = config_lib.branches(config)
  missing = [b for b in wanted if b not in done]
  return ", ".join(done) + (f" (still to run: {', '.join(missing)})" if missing else "")


def write_report(workdir: str, config=None, *, grid: bool = True) -> str | None:
  """Writes the results tables, the figures and report.md into `workdir`; returns report.md's path (None off
  process 0)."""
  if jax.process_index() != 0:
    return None
  config = config if config is not None else workdir_lib.load_run_config(workdir)
  rows, summary = results.write_results(workdir, config)
  if not rows:
    raise UserError(f"No finished ticket in '{os.path.join(workdir, workdir_lib.TICKETS)}': run python -m "
                    f"jaxtickets.main --workdir={workdir} first.")
  names = workdir_lib.FIGURES
  at = lambda figure: os.path.join(workdir, names[figure])
  figures, notes = {}, []
  title = f"{config.model.name}: held-out loss vs sparsity, geometric mean ratio to the dense network"
  plot_curves(summary, config.imp.match_tolerance, at("curves"), title, terms=results.run_terms(rows)[0])
  figures["curves"] = names["curves"]
  notes += _collapse_notes(workdir, rows)
  first_rep = min(r["replicate"] for r in rows)
  imp_rows = sorted((r for r in rows if r["branch"] == "imp" and r["replicate"] == first_rep), key=lambda r: r["round"])
  if imp_rows:
    final = imp_rows[-1]
    meta = checkpoint.load_ticket_metadata(workdir_lib.ticket_dir(workdir, "imp", final["round"], first_rep))
    plot_layers(meta["sparsity"], at("layers"),
                f"{config.model.name}: per-layer sparsity, IMP round {final['round']} (replicate {first_rep})")
    figures["layers"] = names["layers"]
  birds = [r for r in rows if r["branch"] == "imp" and r["round"] == 0 and r.get("early_bird_history")]
  if birds:
    plot_early_bird(birds, config.imp.early_bird_epsilon, at("early_bird"))
    figures["early_bird"] = names["early_bird"]
  if grid and imp_rows:
    try:
      plot_grid(config, imp_rows, workdir, at("grid"))
      figures["grid"] = names["grid"]
    except UserError as e:  # e.g. the evaluation images moved since the run: the rest of the report still holds
      notes.append(f"The image grid was skipped: {e}")
  path = os.path.join(workdir, workdir_lib.REPORT)
  text = format_markdown(config, rows, summary, workdir, figures, notes)
  section = _stability_section(workdir)  # when the run's stability was measured (jaxtickets.stability)
  if section:
    text = text.rstrip("\n") + "\n\n" + "\n".join(section)
  storage.write_atomically(path, text)
  return path


def _stability_section(workdir: str) -> list[str]:
  """The stability section, when stability.csv exists."""
  rows = results.stability_rows(workdir)
  if not rows:
    return []
  return ["## Stability (linear mode connectivity)", "",
          "Two copies of each round's start (theta_k * mask) trained with other data orders; the barrier is the "
          "highest held-out loss on the straight line between them minus the mean of its ends. About zero: the "
          "round is stable to the data order (Frankle et al. 2020). When the two ends differ, a path that only falls "
          "from the worse end to the better one still has a barrier by this measure; the last column, the "
          "largest rise above the straight line between the ends' losses, is 0 for such a path. One replicate, "
          "one pair of copies per round: no interval.", "",
          table(["round", "replicate", "sparsity", "rewind step", "barrier", "barrier / ends' mean",
                 "rise above the line between the ends"],
                [[r["round"], r["replicate"], f"{r['sparsity']:.4f}", r["rewind_step"], f"{r['barrier']:.4g}",
                  pct(r["barrier_relative"]), f"{r['barrier_linear']:.4g}"] for r in rows]),
          "", f"![stability]({workdir_lib.STABILITY_FIGURE})", ""]


def _collapse_notes(workdir: str, rows: list[dict]) -> list[str]:
  """A warning per IMP ticket with a layer above 99% sparsity (layer collapse), the first round each replicate."""
  from jaxtickets import sparsity

  notes = []
  for rep in sorted({r["replicate"] for r in rows}):
    for r in sorted((r for r in rows if r["branch"] == "imp" and r["replicate"] == rep), key=lambda r: r["round"]):
      report = checkpoint.load_ticket_metadata(workdir_lib.ticket_dir(workdir, "imp", r["round"], rep))["sparsity"]
      collapsed = sparsity.collapsed_layers(report)
      if collapsed:
        notes.append(f"WARNING, layer collapse: from IMP round {r['round']} of replicate {rep}, "
                     f"{', '.join(collapsed)} is above 99% sparsity (config.sparsity.layer_cap caps it).")
        break
  return notes


# ----------------------------------------------------------------------------- the study (jaxtickets.study)

STUDY_TITLES = {"encoder": "Finding 1: encoder trained vs fixed", "baselines": "Finding 2: IMP vs baselines",
                "transform": "Finding 3: transform pruned vs not",
                "rewind": "Rewind sweep: which rewind point makes tickets",
                "early_bird": "Early-bird tickets vs full IMP"}


def _imp_best(summary):
  """IMP's conservative highest matching round (summary rows), or None."""
  return results.highest_matching(summary).get("imp", (None, None))[0]


def _dense(rows):
  return next((r for r in rows if r["branch"] == "imp" and r["round"] == 0), None)


def _dense_total(rows) -> str:
  """The dense round's mean held-out total as the study's tables show it, marked when every dense run collapsed."""
  dense = _dense(rows)
  if dense is None:
    return "-"
  return f"{dense['total']:.6g}" + (" (collapsed)" if dense.get("replicates", 1) == 0 else "")


def _sparsity_at(row) -> str:
  return "none" if row is None else f"{row['sparsity_prunable']:.4f} (round {row['round']})"


def _panels(runs) -> list[tuple[str, str, list[tuple[str, str]]]]:
  """(model, comparison, [(run, branch), ...]) for each panel of the combined figure."""
  panels = []
  for model in dict.fromkeys(s.model for s in runs):
    names = [s.name for s in runs if s.model == model]
    ref = next(s for s in runs if s.model == model and s.name == "reference")
    mine = [(model, "baselines", [("reference", b) for b in config_lib.branches(ref.config)])]
    for comp in ("encoder", "transform"):
      alt = [n for n in names if n.startswith(comp)]
      if alt:
        mine.append((model, comp, [("reference", "imp")] + [(n, "imp") for n in alt]))
    panels += mine
  return panels


def plot_study(runs, tables, path: str) -> None:
  """One panel per model and comparison: total loss vs its run's dense (%) against sparsity, with 95% intervals."""
  panels = _panels(runs)
  models = list(dict.fromkeys(s.model for s in runs))
  cols = max(1, max((sum(p[0] == m for p in panels) for m in models), default=1))
  fig = Figure(figsize=(5 * cols, 3.8 * len(models)), layout="constrained")
  axes = np.asarray(fig.subplots(len(models), cols, squeeze=False))
  for ax in axes.flat:
    ax.set_visible(False)
  for model_i, model in enumerate(models):
    for j, (_, comp, lines) in enumerate(p for p in panels if p[0] == model):
      ax = axes[model_i, j]
      ax.set_visible(True)
      cfg = next(s.config for s in runs if s.model == model)
      tol = 100 * cfg.imp.match_tolerance
      ax.axhline(tol, color="k", ls="--", lw=1, label=f"tolerance +{tol:.1f}%")
      for k, (run_name, branch) in enumerate(lines):
        rows = [r for r in tables[(model, run_name)] if r["branch"] in (branch, "imp") and
                (r["branch"] == branch or r["round"] == 0)]
        rows.sort(key=lambda r: r["round"])
        label = branch if comp == "baselines" else f"{run_name} ({branch})"
        x = [100 * r["sparsity_prunable"] for r in rows]
        ax.fill_between(x, [100 * r["ci_low"] for r in rows], [100 * r["ci_high"] for r in rows], color=f"C{k}",
                        alpha=0.18, lw=0)
        ax.plot(x, [100 * r["relative_to_dense"] for r in rows], "o-", color=f"C{k}", ms=4, label=label)
      ax.set_title(f"{model}: {STUDY_TITLES[comp]}", fontsize=10)
      ax.set_xlabel("sparsity of the prunable weights (%)")
      ax.set_ylabel("total loss vs its dense run (%)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  storage.save_figure(fig, path, dpi=100)


def _rewind_section(runs, tables) -> list[str]:
  sweep = [s for s in runs if s.name.startswith("rewind_")]
  if not sweep:
    return []
  lines = []
  for s in sweep:
    barriers = ", ".join(f"r{r['round']} {r['barrier_relative']:+.1%}" for r in results.stability_rows(s.workdir))
    lines.append([s.model, s.config.imp.rewind_step, _sparsity_at(_imp_best(tables[(s.model, s.name)])),
                  barriers or "-"])
  return ["", f"## {STUDY_TITLES['rewind']}", "",
          "One IMP per rewind point k (the weights after k dense steps), and the error barrier between two copies "
          "of each round's start trained on other data orders (replicate 0, relative to the ends' mean loss).", "",
          table(["model", "rewind step", "highest matching sparsity (IMP)", "barrier per round"], lines),
          "", "![rewind sweep](rewind.png)"]


def _early_bird_section(runs) -> list[str]:
  """Each early-bird round against the reference's IMP round at the same sparsity (results.early_bird_comparison)."""
  lines = []
  for bird in (s for s in runs if s.name == "early_bird"):
    ref = next(s for s in runs if s.model == bird.model and s.name == "reference")
    for c in results.early_bird_comparison(results.collect_rows(bird.workdir), results.collect_rows(ref.workdir)):
      iv = c["interval"]
      if iv is None:
        difference = "none: every replicate has a collapsed ticket"
      else:
        difference = f"{pct(iv.estimate)} {interval_text(iv.low, iv.high)}" + (
            f" ({c['collapsed']} replicate(s) with a collapsed ticket left out)" if c["collapsed"] else "")
      lines.append([bird.model, c["round"], f"{c['sparsity_prunable']:.4f}", f"{c['imp_total']:.4g}",
                    f"{c['early_bird_total']:.4g}", difference, c["comparison"], f"{c['imp_steps']:.0f}",
                    f"{c['early_bird_steps']:.0f}"])
  if not lines:
    return []
  return ["", f"## {STUDY_TITLES['early_bird']}", "",
          "The early-bird run's rounds against the reference's IMP rounds at the same sparsity. Difference = "
          "geometric mean ratio of held-out loss (early bird / IMP) - 1, paired by replicate and held-out pair, "
          "crops of one image combination averaged, with its 95% interval; steps = training steps spent up to that "
          "round (mean over replicates).", "",
          table(["model", "round", "sparsity", "IMP total", "early-bird total", "difference (95%)", "verdict",
                 "IMP steps", "early-bird steps"], lines)]


def plot_rewind(runs, tables, path: str) -> None:
  """Left: highest matching sparsity against the rewind point. Right: the barrier against sparsity per point."""
  fig = Figure(figsize=(11, 4.2), layout="constrained")
  left, right = fig.subplots(1, 2)
  for m, model in enumerate(dict.fromkeys(s.model for s in runs)):
    sweep = [s for s in runs if s.model == model and s.name.startswith("rewind_")]
    best = [_imp_best(tables[(s.model, s.name)]) for s in sweep]
    left.plot([s.config.imp.rewind_step for s in sweep], [100 * b["sparsity_prunable"] if b else 0.0 for b in best],
              "o-", color=f"C{m}", label=model)
    for k, s in enumerate(sweep):
      rows = results.stability_rows(s.workdir)
      right.plot([100 * r["sparsity"] for r in rows], [100 * r["barrier_relative"] for r in rows], "o-",
                 color=f"C{k}", label=f"{model}, k = {s.config.imp.rewind_step}")
  left.set_xlabel("rewind step k")
  left.set_ylabel("highest matching sparsity (%)")
  left.legend(fontsize=8)
  right.axhline(0.0, color="0.5", lw=1)
  right.set_xlabel("sparsity of the prunable weights (%)")
  right.set_ylabel("error barrier (% of the ends' mean)")
  right.legend(fontsize=7)
  storage.save_figure(fig, path, dpi=100)


def format_study(study_config, runs, tables, notes: list[str], reports: bool,
                 overrides: list[tuple[str, object]]) -> str:
  """study.md: the sub-runs, one table per finding, the combined figure."""
  changes = "; ".join(f"{k}={v!r}" for k, v in overrides) or "none"
  text = [f"# Study: {study_config.models}", "",
          f"Variant {study_config.variant!r} of each configs/<model>.py, overrides `{changes}`. Highest matching "
          "sparsity = the sparsest round that matches together with every round below it, where a round matches "
          "when the whole 95% interval of its held-out total loss relative to its run's dense network (over "
          "replicates and pairs) lies below match_tolerance.", "",
          "## Runs", ""]
  lines = []
  for s in runs:
    rows = tables[(s.model, s.name)]
    done = max((r["round"] for r in rows if r["branch"] == "imp"), default=-1)
    link = f"[report]({s.model}/{s.name}/report.md)" if reports else f"`{s.workdir}`"
    encoder = "trained" if s.config.model.train_encoder else "fixed"
    lines.append([s.model, s.name, encoder, f"`{s.config.sparsity.scope}`", s.config.imp.branches,
                  f"{done} of {s.config.imp.rounds}", _dense_total(rows), link])
  text.append(table(["model", "run", "encoder", "scope", "branches", "pruned rounds", "dense total", "details"],
                    lines))
  by = {(s.model, s.name): s for s in runs}
  models = list(dict.fromkeys(s.model for s in runs))
  for comp in ("encoder", "transform"):
    lines = []
    for m in models:
      alts = [n for (mm, n) in by if mm == m and n.startswith(comp)]
      for name in (["reference"] + alts) if alts else []:
        s, rows = by[(m, name)], tables[(m, name)]
        if comp == "encoder":
          state = "trained" if s.config.model.train_encoder else "fixed"
        else:
          state = "pruned" if "transform" in s.config.sparsity.scope else "not pruned"
        lines.append([m, name, state, _dense_total(rows), _sparsity_at(_imp_best(rows))])
    if lines:
      text += ["", f"## {STUDY_TITLES[comp]}", ""]
      text.append(table(["model", "run", comp, "dense total", "highest matching sparsity (IMP)"], lines))
  lines = []
  for m in models:
    rows = tables[(m, "reference")]
    for branch, (best, _) in results.highest_matching(rows).items():
      lines.append([m, branch, _sparsity_at(best)])
  if lines:
    text += ["", f"## {STUDY_TITLES['baselines']}", ""]
    text.append(table(["model", "branch", "highest matching sparsity"], lines))
  text += ["", "## Finding 4: tickets in every model", ""]
  text.append(table(["model", "highest matching sparsity (IMP, reference run)"],
                    [[m, _sparsity_at(_imp_best(tables[(m, "reference")]))] for m in models]))
  text += _rewind_section(runs, tables)
  text += _early_bird_section(runs)
  text += ["", "## Figure", "", "![study](study.png)", ""]
  text += [f"- {n}" for n in notes]
  return "\n".join(text) + "\n"


def write_study(study_config, runs, notes: list[str], workdir: str, *, reports: bool,
                overrides: list[tuple[str, object]]) -> str:
  """study.md, study.png and, with a rewind sweep, rewind.png in the study's workdir; returns study.md's path.

  runs: the study's sub-runs (each with its model, name, config and workdir), trained; overrides: the
  (field, value) pairs every sub-run's config got, as the header names them.
  """
  tables = {(s.model, s.name): results.summarize(results.collect_rows(s.workdir), s.config.imp.match_tolerance)
            for s in runs}
  plot_study(runs, tables, os.path.join(workdir, "study.png"))
  if any(s.name.startswith("rewind_") for s in runs):
    plot_rewind(runs, tables, os.path.join(workdir, "rewind.png"))
  path = os.path.join(workdir, "study.md")
  storage.write_atomically(path, format_study(study_config, runs, tables, notes, reports, overrides))
  return path


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a program: main defines --workdir too."""
  flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json and tickets/).")
  flags.DEFINE_bool("grid", True, "Draw the image grid (stylizes the held-out pairs with every IMP ticket).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.workdir:
    sys.exit("error: pass --workdir=DIR, the workdir of a run (e.g. runs/adain).")
  try:
    path = write_report(FLAGS.workdir, grid=FLAGS.grid)
  except UserError as e:
    sys.exit(f"error: {e}")
  if path:
    print(f"Wrote {path} with its figures (PNG) beside it.")
    config = workdir_lib.load_run_config(FLAGS.workdir)
    rows = results.collect_rows(FLAGS.workdir)
    for line in (learnability_lines(results.summarize(rows, config.imp.match_tolerance))
                 + planner_lines(rows, config.imp.match_tolerance)):
      print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main)
