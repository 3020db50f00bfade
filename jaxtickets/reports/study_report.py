"""The study's evidence (jaxtickets.study): study.md, study.png and rewind.png over its runs."""

import dataclasses
import os

import numpy as np
from matplotlib.figure import Figure

from jaxtickets import settings, storage
from jaxtickets.results import tables as results
from jaxtickets.results.text import interval_text, pct, table


# ----------------------------------------------------------------------------- the study (jaxtickets.study)

@dataclasses.dataclass(frozen=True)
class StudyRun:
  """One sub-run of a study as its report reads it: the model, the sub-run's name, its workdir and the settings it
  trained with."""
  model: str
  name: str
  workdir: str
  settings: settings.RunSettings

  @property
  def protocol(self) -> settings.Protocol:
    return self.settings.protocol


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
    mine = [(model, "baselines", [("reference", b) for b in ref.protocol.branches])]
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
      tol = 100 * next(s.protocol.match_tolerance for s in runs if s.model == model)
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
    lines.append([s.model, s.protocol.rewind_step, _sparsity_at(_imp_best(tables[(s.model, s.name)])),
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
    left.plot([s.protocol.rewind_step for s in sweep], [100 * b["sparsity_prunable"] if b else 0.0 for b in best],
              "o-", color=f"C{m}", label=model)
    for k, s in enumerate(sweep):
      rows = results.stability_rows(s.workdir)
      right.plot([100 * r["sparsity"] for r in rows], [100 * r["barrier_relative"] for r in rows], "o-",
                 color=f"C{k}", label=f"{model}, k = {s.protocol.rewind_step}")
  left.set_xlabel("rewind step k")
  left.set_ylabel("highest matching sparsity (%)")
  left.legend(fontsize=8)
  right.axhline(0.0, color="0.5", lw=1)
  right.set_xlabel("sparsity of the prunable weights (%)")
  right.set_ylabel("error barrier (% of the ends' mean)")
  right.legend(fontsize=7)
  storage.save_figure(fig, path, dpi=100)


def format_study(runs, tables, notes: list[str], *, study_models: str, variant: str, reports: bool,
                 overrides: list[tuple[str, object]]) -> str:
  """study.md: the sub-runs, one table per finding, the combined figure."""
  changes = "; ".join(f"{k}={v!r}" for k, v in overrides) or "none"
  text = [f"# Study: {study_models}", "",
          f"Variant {variant!r} of each configs/<model>.py, overrides `{changes}`. Highest matching "
          "sparsity = the sparsest round that matches together with every round below it, where a round matches "
          "when the whole 95% interval of its held-out total loss relative to its run's dense network (over "
          "replicates and pairs) lies below match_tolerance.", "",
          "## Runs", ""]
  lines = []
  for s in runs:
    rows = tables[(s.model, s.name)]
    done = max((r["round"] for r in rows if r["branch"] == "imp"), default=-1)
    link = f"[report]({s.model}/{s.name}/report.md)" if reports else f"`{s.workdir}`"
    encoder = "trained" if s.settings.model.options.train_encoder else "fixed"
    lines.append([s.model, s.name, encoder, f"`{','.join(s.protocol.pruning.scope)}`", ",".join(s.protocol.branches),
                  f"{done} of {s.protocol.rounds}", _dense_total(rows), link])
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
          state = "trained" if s.settings.model.options.train_encoder else "fixed"
        else:
          state = "pruned" if "transform" in ",".join(s.protocol.pruning.scope) else "not pruned"
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


def write_study(runs: list[StudyRun], notes: list[str], workdir: str, *, study_models: str, variant: str,
                reports: bool, overrides: list[tuple[str, object]]) -> str:
  """study.md, study.png and, with a rewind sweep, rewind.png in the study's workdir; returns study.md's path.

  runs: the study's sub-runs, trained; study_models, variant: the study's config.models and config.variant as its
  header names them; overrides: the (field, value) pairs every sub-run's config got.
  """
  tables = {(s.model, s.name): results.summarize(results.collect_rows(s.workdir), s.protocol.match_tolerance)
            for s in runs}
  plot_study(runs, tables, os.path.join(workdir, "study.png"))
  if any(s.name.startswith("rewind_") for s in runs):
    plot_rewind(runs, tables, os.path.join(workdir, "rewind.png"))
  path = os.path.join(workdir, "study.md")
  storage.write_atomically(path, format_study(runs, tables, notes, study_models=study_models,
                                              variant=variant, reports=reports, overrides=overrides))
  return path
