"""The evidence of a run: python -m jaxtickets.report --workdir=DIR (main runs it at the end, too).

Writes into the workdir (process 0 only):
  results.csv    one row per branch and round, rebuilt from the saved tickets (imp.write_results)
  curves.png     total, content and style loss vs sparsity, one line per branch, the dense result as a band of
                 +- match_tolerance, each branch's highest matching sparsity starred
  layers.png     per-layer sparsity of the final IMP ticket (which layers IMP empties first)
  grid.png       rows = held-out content/style pairs, columns = content, style, dense and each IMP round
  report.md      the run's settings, the highest matching sparsity per branch, the parameters left, the figures
"""

import os
import sys

from absl import app, flags
import jax
import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from jaxtickets import checkpoint, config as config_lib, imp
from jaxtickets.errors import UserError

FIGURES = {"curves": "curves.png", "layers": "layers.png", "grid": "grid.png"}
METRICS = ("total", "content", "style")
MAX_GRID_ROWS = 8
_GROUP_COLORS = {"encoder": "tab:blue", "decoder": "tab:orange", "transform": "tab:green"}


def _by_branch(rows: list[dict]) -> dict[str, list[dict]]:
  """Rows per branch by round; every branch starts at the dense round it was pruned from."""
  dense = [r for r in rows if r["branch"] == "imp" and r["round"] == 0]
  out = {}
  for r in rows:
    out.setdefault(r["branch"], []).append(r)
  return {b: sorted((dense if b != "imp" else []) + rs, key=lambda r: r["round"]) for b, rs in out.items()}


def plot_curves(rows: list[dict], tolerance: float, path: str, title: str = "") -> None:
  """One panel per metric: loss vs prunable sparsity per branch, the dense band, the best matching starred."""
  fig = Figure(figsize=(15, 5.2), layout="constrained")
  axes = fig.subplots(1, len(METRICS))
  dense = next((r for r in rows if r["branch"] == "imp" and r["round"] == 0), None)
  best = imp.highest_matching(rows)
  for ax, metric in zip(axes, METRICS):
    if dense is not None:
      d = dense[metric]
      ax.axhspan(d * (1 - tolerance), d * (1 + tolerance), color="0.85", label=f"dense ± {tolerance:.1%}")
      ax.axhline(d, color="0.5", lw=1)
    for i, (branch, rs) in enumerate(_by_branch(rows).items()):
      color = f"C{i}"
      ax.plot([100 * r["sparsity_prunable"] for r in rs], [r[metric] for r in rs], "o-", color=color, label=branch,
              ms=4)
      b = best.get(branch)
      if b is not None and metric == "total":
        ax.plot(100 * b["sparsity_prunable"], b[metric], "*", color=color, ms=16, mec="k",
                label=f"{branch}: highest matching {b['sparsity_prunable']:.1%}")
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel(f"{metric} loss (held-out pairs)")
    ax.set_title(f"{metric} loss" + (" (matching: within the band)" if metric == "total" else ""))
    ax.grid(alpha=0.3)
  handles, labels = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=8)
  if title:
    fig.suptitle(title)
  fig.savefig(path, dpi=100)


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
  fig.savefig(path, dpi=100)


def plot_grid(config, imp_rows: list[dict], workdir: str, path: str) -> None:
  """Rows = held-out pairs, columns = content, style, dense and each IMP round's ticket."""
  from jaxtickets import data, evaluate, inference

  pairs = data.eval_pairs(config)
  n = min(len(pairs["content"]), MAX_GRID_ROWS)
  pairs = {"content": pairs["content"][:n], "style": pairs["style"][:n], "names": pairs["names"][:n]}
  model, vgg = inference.model_and_vgg(config)
  columns = [("content", pairs["content"]), ("style", pairs["style"])]
  for r in tqdm(imp_rows, desc="report grid", unit="round", disable=None, leave=False):
    ticket = checkpoint.load_ticket(imp.ticket_dir(workdir, "imp", r["round"]))
    out = evaluate.stylize_pairs(model, ticket.trained_params, ticket.masks, vgg, pairs)
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
  fig.savefig(path, dpi=100)


def _fmt(value, key: str) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, bool):
    return "yes" if value else "no"
  if isinstance(value, int):
    return f"{value:,}" if key.startswith("remaining") else str(value)
  if key == "relative_to_dense":
    return f"{value:+.2%}"
  return f"{value:.4f}" if key.startswith("sparsity") else f"{value:.6g}"


def _table(header: list[str], lines: list[list[str]]) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


def format_markdown(config, rows: list[dict], workdir: str, figures: dict, notes: list[str]) -> str:
  """report.md: settings, highest matching sparsity per branch, parameters left, figures, all results."""
  m, sp, ip = config.model, config.sparsity, config.imp
  dense = next((r for r in rows if r["branch"] == "imp" and r["round"] == 0), None)
  done = max((r["round"] for r in rows if r["branch"] == "imp"), default=0)
  vgg = f"`{m.vgg_weights}`" if m.vgg_weights else "**random** (no pretrained VGG: the losses are not meaningful)"
  rewind = "0 (the initial weights)" if ip.rewind_step == 0 else f"{ip.rewind_step} (weights after that many steps)"
  settings = [
      ["model", f"{m.name} (width {m.width:g}, {m.dtype})"],
      ["encoder", "trained (part of the pruned network)" if m.train_encoder else "fixed (the frozen VGG)"],
      ["VGG weights", vgg],
      ["pruning scope", f"`{sp.scope}` ({sp.method} magnitude, {sp.fraction:.0%} of the remaining weights per "
                        "round)"],
      ["rewind step", rewind],
      ["rounds", f"{done} pruned round(s) done of {ip.rounds} configured; {config.train.steps:,} steps per round"],
      ["branches", _branches_line(config, rows)],
      ["matching", f"total held-out loss at most {ip.match_tolerance:.1%} above the dense network's"
                   + (f" ({dense['total']:.6g})" if dense else "")],
  ]
  if dense:
    settings.append(["parameters (dense)", f"{dense['remaining_total']:,} in all, {dense['remaining_prunable']:,} "
                                           "prunable"])
  text = [f"# Lottery tickets of {m.name}", "", f"Workdir `{workdir}`, made by `python -m jaxtickets.report`.", "",
          _table(["setting", "value"], settings), "", "## Highest matching sparsity", ""]
  best_lines = []
  for branch, b in imp.highest_matching(rows).items():
    if b is None:
      best_lines.append([branch, "none", "-", "-", "-", "-", "-", "-"])
    else:
      best_lines.append([branch, str(b["round"]), f"{b['sparsity_prunable']:.4f}", f"{b['sparsity_total']:.4f}",
                         f"{b['remaining_prunable']:,}", f"{b['remaining_total']:,}", f"{b['total']:.6g}",
                         f"{b['relative_to_dense']:+.2%}"])
  text += [_table(["branch", "round", "sparsity (prunable)", "sparsity (all)", "remaining prunable",
                   "remaining (all)", "total loss", "vs dense"], best_lines) if best_lines
           else "No pruned round yet.", ""]
  captions = {"curves": "Quality vs sparsity (lower loss is better; the grey band is dense ± the tolerance)",
              "layers": "Per-layer sparsity of the final IMP ticket",
              "grid": "Held-out pairs: content, style, dense, then each IMP round"}
  text += ["## Figures", ""]
  for key, name in figures.items():
    text += [f"### {captions[key]}", "", f"![{captions[key]}]({name})", ""]
  text += [f"- {n}" for n in notes] + ([""] if notes else [])
  keys = list(imp.RESULT_FIELDS)
  text += ["## All results (results.csv)", "", _table(keys, [[_fmt(r[k], k) for k in keys] for r in rows]), ""]
  return "\n".join(text)


def _branches_line(config, rows) -> str:
  done = sorted({r["branch"] for r in rows}, key=_branch_order)
  wanted = config_lib.branches(config)
  missing = [b for b in wanted if b not in done]
  return ", ".join(done) + (f" (still to run: {', '.join(missing)})" if missing else "")


def _branch_order(branch: str):
  order = {b: i for i, b in enumerate(config_lib.BRANCHES)}
  return order.get(branch, 99), branch


def write_report(workdir: str, config=None, *, grid: bool = True) -> str | None:
  """Writes results.csv, the figures and report.md into `workdir`; returns report.md's path (None off process 0)."""
  if jax.process_index() != 0:
    return None
  from jaxtickets import inference

  config = config if config is not None else inference.load_run_config(workdir)
  rows = imp.write_results(workdir, config)
  if not rows:
    raise UserError(f"No finished ticket in '{os.path.join(workdir, 'tickets')}': run python -m jaxtickets.main "
                    f"--workdir={workdir} first.")
  figures, notes = {}, []
  title = f"{config.model.name}: held-out loss vs sparsity"
  plot_curves(rows, config.imp.match_tolerance, os.path.join(workdir, FIGURES["curves"]), title)
  figures["curves"] = FIGURES["curves"]
  imp_rows = sorted((r for r in rows if r["branch"] == "imp"), key=lambda r: r["round"])
  final = imp_rows[-1]
  meta = checkpoint.load_ticket_metadata(imp.ticket_dir(workdir, "imp", final["round"]))
  plot_layers(meta["sparsity"], os.path.join(workdir, FIGURES["layers"]),
              f"{config.model.name}: per-layer sparsity, IMP round {final['round']}")
  figures["layers"] = FIGURES["layers"]
  if grid:
    try:
      plot_grid(config, imp_rows, workdir, os.path.join(workdir, FIGURES["grid"]))
      figures["grid"] = FIGURES["grid"]
    except UserError as e:  # e.g. the evaluation images moved since the run: the rest of the report still holds
      notes.append(f"The image grid was skipped: {e}")
  path = os.path.join(workdir, "report.md")
  text = format_markdown(config, rows, workdir, figures, notes)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
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


if __name__ == "__main__":
  define_flags()
  app.run(main)
