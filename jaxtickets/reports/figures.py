"""A run's figures: curves.png, layers.png, grid.png, early_bird.png, and stability.png for jaxtickets.stability."""

import math

import numpy as np
import matplotlib.lines
import matplotlib.ticker
from matplotlib.figure import Figure
from tqdm import tqdm

from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.results import tables as results
from jaxtickets import storage
from jaxtickets.weights import files as weights

MAX_GRID_ROWS = 8
MAX_CURVE_COLUMNS = 4  # panels per row of curves.png (MCCNet has six terms)
_GROUP_COLORS = {"encoder": "tab:blue", "decoder": "tab:orange", "transform": "tab:green"}


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
  (ticket / dense) - 1 vs prunable sparsity, per branch, with its 95% interval as a band. In the total's panel
  (the one the verdicts judge) filled dots match, hollow ones are inconclusive, crosses do not match, and the legend
  says so; the terms' panels mark their estimates with plain dots."""
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
      ax.axhline(ratio(tolerance), color="k", ls="--", lw=1,
                 label=f"tolerance +{tolerance:.1%}: a round matches when its whole interval lies below")
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
        marker = _VERDICT_MARKERS.get(r.get("verdict", ""), {}) if metric == "total" else dict(marker=".")
        ax.plot(xi, ratio(r[rel]), color=color, ms=6, ls="", **marker)
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
    ax.set_title(f"{metric} loss")
    ax.grid(alpha=0.3, which="both")
  handles, labels = axes[0].get_legend_handles_labels()
  shown_verdicts = {r.get("verdict", "") for r in summary}
  for verdict, marker in _VERDICT_MARKERS.items():  # what the total panel's markers say
    if verdict in shown_verdicts:
      handles.append(matplotlib.lines.Line2D([], [], color="0.3", ls="", ms=6, **marker))
      labels.append(verdict or "dense network")
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


def plot_grid(model_spec, data_spec, imp_rows: list[dict], workdir: str, path: str) -> None:
  """Rows = held-out pairs, columns = content, style, the dense network's reconstruction (the content stylized with
  itself as the style: what the learnability check scores), dense and each IMP round's ticket."""
  from jaxtickets import data
  from jaxtickets.core import evaluate

  pairs = data.eval_pairs(data_spec)
  n = min(len(pairs["content"]), MAX_GRID_ROWS)
  pairs = {"content": pairs["content"][:n], "style": pairs["style"][:n], "names": pairs["names"][:n]}
  model, vgg = weights.model_and_vgg(model_spec)
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
