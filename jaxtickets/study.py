"""The paper's comparisons as one job: python -m jaxtickets.study --config=configs/study_adain.py[:demo].

For every model in config.models, sub-runs (each an imp.run in WORKDIR/<model>/<run>) on top of the model's
own config (configs/<model>.py:<config.variant>, then config.overrides):
  reference        the model's config, IMP plus the baselines (finding 2: IMP vs random pruning/reinit, one-shot)
  encoder_fixed    the other choice of model.train_encoder (finding 1: training the encoder beats fixing it)
  transform_dense  the scope without the transform group, or transform_pruned with it (finding 3), only for
                   models that have transform parameters
  rewind_<k>       ('rewind') IMP rewound to step k, for each k of config.rewind_steps, with the stability
                   (linear mode connectivity) of each round: which rewind point makes tickets, and why
  early_bird       ('early_bird') IMP whose dense round stops once its mask settles, against the reference's
                   IMP at the same sparsity: the quality it costs and the steps it saves
Then WORKDIR/study.md and WORKDIR/study.png compare them (finding 4: tickets for every model). imp.run skips
finished tickets, so running the same command again resumes.
"""

if __name__ == "__main__":  # first, before the heavy imports: it may re-execute this command under tcmalloc
  from jaxtickets import tcmalloc  # pylint: disable=g-import-not-at-top
  tcmalloc.preload()

import ast
import copy
import dataclasses
import importlib.util
import os
import sys

from absl import app, flags
import jax
import ml_collections
import numpy as np
from matplotlib.figure import Figure

from jaxtickets import config as config_lib, imp, preempt, results, workdir as workdir_lib
from jaxtickets.errors import UserError

COMPARISONS = ("encoder", "transform", "baselines", "rewind", "early_bird")
_TITLES = {"encoder": "Finding 1: encoder trained vs fixed", "baselines": "Finding 2: IMP vs baselines",
           "transform": "Finding 3: transform pruned vs not", "rewind": "Rewind sweep: which rewind point makes tickets",
           "early_bird": "Early-bird tickets vs full IMP"}


@dataclasses.dataclass
class SubRun:
  model: str
  name: str
  config: ml_collections.ConfigDict
  workdir: str


def configs_dir(study_config) -> str:
  """Where configs/<model>.py live: config.configs_dir, else the repository's configs/ folder."""
  if study_config.get("configs_dir"):
    return study_config.configs_dir
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def model_config(name: str, variant: str, folder: str) -> ml_collections.ConfigDict:
  """configs/<name>.py's get_config(variant)."""
  path = os.path.join(folder, f"{name}.py")
  if not os.path.isfile(path):
    raise UserError(f"The study needs '{path}' for model {name!r}: write it, or set config.configs_dir.")
  spec = importlib.util.spec_from_file_location(f"_study_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    return module.get_config(variant)
  except ValueError as e:
    raise UserError(f"'{path}' has no variant {variant!r} ({e}); set config.variant.") from None


def parse_overrides(text: str) -> list[tuple[str, object]]:
  """'train.steps=6; sparsity.scope=decoder,transform' -> [('train.steps', 6), ('sparsity.scope', '...')]."""
  out = []
  for item in (text or "").split(";"):
    if not item.strip():
      continue
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
      raise UserError(f"config.overrides has {item.strip()!r}: write 'section.field=value' entries separated by "
                      "';', e.g. 'train.steps=100; imp.rounds=2'.")
    try:
      value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
      value = raw.strip()  # a plain string such as a scope or a path
    out.append((key.strip(), value))
  return out


def apply_overrides(config, text: str) -> None:
  """Sets every 'section.field=value' of `text` in `config`; unknown fields and wrong types are UserErrors."""
  for key, value in parse_overrides(text):
    *sections, field = key.split(".")
    try:
      node = config
      for section in sections:
        node = node[section]
      if field not in node:
        raise KeyError(field)
      node[field] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise UserError(f"config.overrides sets {key} = {value!r}, which the model config does not take "
                      f"({type(e).__name__}: {e}); fix or remove it.") from None


def _has_transform(config) -> bool:
  from jaxtickets.models import get_model

  return "transform" in get_model(config.model.name)(config.model).groups


def plan(study_config, workdir: str) -> tuple[list[SubRun], list[str]]:
  """The sub-runs of the study and notes on comparisons that do not apply."""
  comparisons = config_lib.split_list(study_config.comparisons)
  bad = [c for c in comparisons if c not in COMPARISONS]
  if bad:
    raise UserError(f"config.comparisons names {bad[0]!r}: choose from {', '.join(COMPARISONS)}.")
  models = config_lib.split_list(study_config.models)
  if not models:
    raise UserError("config.models is empty: name at least one model, e.g. 'adain'.")
  runs, notes = [], []
  for name in models:
    base = model_config(name, study_config.variant, configs_dir(study_config))
    base.model.name = name
    apply_overrides(base, study_config.overrides)
    ref = copy.deepcopy(base)
    baselines = config_lib.split_list(study_config.baselines) if "baselines" in comparisons else []
    ref.imp.branches = ",".join(["imp"] + baselines)
    out = [("reference", ref)]
    if "encoder" in comparisons:
      alt = copy.deepcopy(base)
      alt.model.train_encoder = not base.model.train_encoder
      alt.imp.branches = "imp"
      out.append(("encoder_fixed" if base.model.train_encoder else "encoder_trained", alt))
    if "transform" in comparisons:
      if not _has_transform(base):
        notes.append(f"{name} has no transform parameters (its feature transformation is parameter-free), so "
                     "finding 3 does not apply to it.")
      else:
        scope = config_lib.split_list(base.sparsity.scope)
        rest = [p for p in scope if p.strip("/").split("/")[0] != "transform"]
        alt = copy.deepcopy(base)
        alt.imp.branches = "imp"
        alt.sparsity.scope = ",".join(rest if rest != scope else scope + ["transform"])
        if rest:
          out.append(("transform_dense" if rest != scope else "transform_pruned", alt))
        else:
          notes.append(f"{name}'s scope prunes only the transform, so there is no run without it.")
    if "rewind" in comparisons:
      points = rewind_points(study_config, base)
      for k in points:
        alt = copy.deepcopy(base)
        alt.imp.rewind_step, alt.imp.branches = k, "imp"
        out.append((f"rewind_{k}", alt))
    if "early_bird" in comparisons:
      alt = copy.deepcopy(base)
      alt.imp.early_bird, alt.imp.branches = True, "imp"
      out.append(("early_bird", alt))
    runs += [SubRun(name, run, cfg, os.path.join(workdir, name, run)) for run, cfg in out]
  return runs, notes


def rewind_points(study_config, base) -> list[int]:
  """config.rewind_steps as step numbers; entries like '0.5%' are that share of a round's steps."""
  points = []
  for item in config_lib.split_list(study_config.get("rewind_steps", "")):
    try:
      k = round(float(item[:-1]) / 100 * base.train.steps) if item.endswith("%") else int(item)
    except ValueError:
      raise UserError(f"config.rewind_steps has {item!r}: write step numbers or shares of a round like "
                      "'0,0.5%,2%'.") from None
    if not 0 <= k < base.train.steps:
      raise UserError(f"config.rewind_steps has {item!r} = step {k}, outside [0, train.steps = {base.train.steps}).")
    points.append(k)
  if not points:
    raise UserError("config.comparisons has 'rewind' but config.rewind_steps is empty: list the rewind points, e.g. "
                    "'0,0.5%,2%'.")
  return list(dict.fromkeys(points))


def run(study_config, workdir: str, *, reports: bool | None = None) -> str | None:
  """Runs (or resumes) every sub-run, then writes study.md and study.png; returns study.md's path."""
  runs, notes = plan(study_config, workdir)
  reports = study_config.get("reports", True) if reports is None else reports
  for i, sub in enumerate(runs, start=1):
    imp.log(f"=== study {i}/{len(runs)}: {sub.model} / {sub.name} -> {sub.workdir}")
    imp.run(sub.config, sub.workdir)
    if sub.name.startswith("rewind_"):
      from jaxtickets import stability

      stability.run(sub.workdir)
    if reports:
      from jaxtickets import report

      report.write_report(sub.workdir, sub.config)
  if jax.process_index() != 0:
    return None
  tables = {(s.model, s.name): results.summarize(results.collect_rows(s.workdir), s.config.imp.match_tolerance)
            for s in runs}
  plot_study(runs, tables, os.path.join(workdir, "study.png"))
  if any(s.name.startswith("rewind_") for s in runs):
    plot_rewind(runs, tables, os.path.join(workdir, "rewind.png"))
  path = os.path.join(workdir, "study.md")
  with open(path + ".tmp", "w") as f:
    f.write(format_study(study_config, runs, tables, notes, reports))
  os.replace(path + ".tmp", path)
  imp.log(f"Study report: {path}")
  return path


def _best(summary, branch="imp"):
  """The conservative highest matching round of `branch` (summary rows), or None."""
  return results.highest_matching(summary).get(branch, (None, None))[0]


def _dense(rows):
  return next((r for r in rows if r["branch"] == "imp" and r["round"] == 0), None)


def _sp(row) -> str:
  return "none" if row is None else f"{row['sparsity_prunable']:.4f} (round {row['round']})"


def _table(header, lines) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
      "| " + " | ".join(str(c) for c in line) + " |" for line in lines]


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
      ax.set_title(f"{model}: {_TITLES[comp]}", fontsize=10)
      ax.set_xlabel("sparsity of the prunable weights (%)")
      ax.set_ylabel("total loss vs its dense run (%)")
      ax.grid(alpha=0.3)
      ax.legend(fontsize=7)
  fig.savefig(path, dpi=100)


def _stability_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, workdir_lib.STABILITY_CSV)
  return results.read_stability_csv(path) if os.path.exists(path) else []


def _rewind_section(runs, tables) -> list[str]:
  sweep = [s for s in runs if s.name.startswith("rewind_")]
  if not sweep:
    return []
  lines = []
  for s in sweep:
    barriers = ", ".join(f"r{r['round']} {r['barrier_relative']:+.1%}" for r in _stability_rows(s.workdir))
    lines.append([s.model, s.config.imp.rewind_step, _sp(_best(tables[(s.model, s.name)])), barriers or "-"])
  return ["", f"## {_TITLES['rewind']}", "",
          "One IMP per rewind point k (the weights after k dense steps), and the error barrier between two copies "
          "of each round's start trained on other data orders (replicate 0, relative to the ends' mean loss).", ""] + \
      _table(["model", "rewind step", "highest matching sparsity (IMP)", "barrier per round"], lines) + \
      ["", "![rewind sweep](rewind.png)"]


def _early_bird_section(runs) -> list[str]:
  """Each early-bird round against the reference's IMP round at the same sparsity: paired per replicate and pair."""
  from jaxtickets import stats

  lines = []
  for bird in (s for s in runs if s.name == "early_bird"):
    ref = next(s for s in runs if s.model == bird.model and s.name == "reference")
    a, b = results.collect_rows(bird.workdir), results.collect_rows(ref.workdir)
    pick = lambda rows, r: sorted((x for x in rows if x["branch"] == "imp" and x["round"] == r),
                                  key=lambda x: x["replicate"])
    spent = lambda rows, r: np.mean([sum(x["steps"] for x in rows if x["branch"] == "imp" and x["round"] <= r
                                         and x["replicate"] == rep) for rep in {x["replicate"] for x in rows}])
    for r in sorted({x["round"] for x in a if x["branch"] == "imp"}):
      ra, rb = pick(a, r), pick(b, r)
      reps = sorted({x["replicate"] for x in ra} & {x["replicate"] for x in rb})
      if not reps:
        continue
      grid = lambda rows: np.array([next(x for x in rows if x["replicate"] == rep)["per_pair"]["total"] for rep in reps])
      interval = stats.paired_difference_interval(grid(ra), grid(rb), pair_names=ra[0].get("pair_names"))
      lines.append([bird.model, r, f"{ra[0]['sparsity_prunable']:.4f}", f"{np.mean(grid(rb)):.4g}",
                    f"{np.mean(grid(ra)):.4g}", f"{interval.estimate:+.2%} [{interval.low:+.2%}, {interval.high:+.2%}]",
                    stats.comparison(interval), f"{spent(b, r):.0f}", f"{spent(a, r):.0f}"])
  if not lines:
    return []
  return ["", f"## {_TITLES['early_bird']}", "",
          "The early-bird run's rounds against the reference's IMP rounds at the same sparsity. Difference = "
          "geometric mean ratio of held-out loss (early bird / IMP) - 1, paired by replicate and held-out pair, "
          "crops of one image combination averaged, with its 95% interval; steps = training steps spent up to that round (mean over replicates).", ""] + \
      _table(["model", "round", "sparsity", "IMP total", "early-bird total", "difference (95%)", "verdict",
              "IMP steps", "early-bird steps"], lines)


def plot_rewind(runs, tables, path: str) -> None:
  """Left: highest matching sparsity against the rewind point. Right: the barrier against sparsity per point."""
  fig = Figure(figsize=(11, 4.2), layout="constrained")
  left, right = fig.subplots(1, 2)
  for m, model in enumerate(dict.fromkeys(s.model for s in runs)):
    sweep = [s for s in runs if s.model == model and s.name.startswith("rewind_")]
    best = [_best(tables[(s.model, s.name)]) for s in sweep]
    left.plot([s.config.imp.rewind_step for s in sweep], [100 * b["sparsity_prunable"] if b else 0.0 for b in best],
              "o-", color=f"C{m}", label=model)
    for k, s in enumerate(sweep):
      rows = _stability_rows(s.workdir)
      right.plot([100 * r["sparsity"] for r in rows], [100 * r["barrier_relative"] for r in rows], "o-",
                 color=f"C{k}", label=f"{model}, k = {s.config.imp.rewind_step}")
  left.set_xlabel("rewind step k")
  left.set_ylabel("highest matching sparsity (%)")
  left.legend(fontsize=8)
  right.axhline(0.0, color="0.5", lw=1)
  right.set_xlabel("sparsity of the prunable weights (%)")
  right.set_ylabel("error barrier (% of the ends' mean)")
  right.legend(fontsize=7)
  fig.savefig(path, dpi=100)


def format_study(study_config, runs, tables, notes, reports: bool) -> str:
  """study.md: the sub-runs, one table per finding, the combined figure."""
  text = [f"# Study: {study_config.models}", "",
          f"Variant {study_config.variant!r} of each configs/<model>.py, overrides "
          f"`{study_config.overrides or 'none'}`. Highest matching sparsity = the sparsest round that matches together "
          "with every round below it, where a round matches when the whole 95% interval of its held-out total loss "
          "relative to its run's dense network (over replicates and pairs) lies below match_tolerance.", "",
          "## Runs", ""]
  lines = []
  for s in runs:
    rows = tables[(s.model, s.name)]
    done = max((r["round"] for r in rows if r["branch"] == "imp"), default=-1)
    dense = _dense(rows)
    link = f"[report]({s.model}/{s.name}/report.md)" if reports else f"`{s.workdir}`"
    encoder = "trained" if s.config.model.train_encoder else "fixed"
    lines.append([s.model, s.name, encoder, f"`{s.config.sparsity.scope}`", s.config.imp.branches, f"{done} of {s.config.imp.rounds}",
                  f"{dense['total']:.6g}" if dense else "-", link])
  text += _table(["model", "run", "encoder", "scope", "branches", "pruned rounds", "dense total", "details"], lines)
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
        dense = _dense(rows)
        lines.append([m, name, state, f"{dense['total']:.6g}" if dense else "-", _sp(_best(rows))])
    if lines:
      text += ["", f"## {_TITLES[comp]}", ""]
      text += _table(["model", "run", comp, "dense total", "highest matching sparsity (IMP)"], lines)
  lines = []
  for m in models:
    rows = tables[(m, "reference")]
    for branch, (best, _) in results.highest_matching(rows).items():
      lines.append([m, branch, _sp(best)])
  if lines:
    text += ["", f"## {_TITLES['baselines']}", ""]
    text += _table(["model", "branch", "highest matching sparsity"], lines)
  text += ["", "## Finding 4: tickets in every model", ""]
  text += _table(["model", "highest matching sparsity (IMP, reference run)"],
                 [[m, _sp(_best(tables[(m, "reference")]))] for m in models])
  text += _rewind_section(runs, tables)
  text += _early_bird_section(runs)
  text += ["", "## Figure", "", "![study](study.png)", ""]
  text += [f"- {n}" for n in notes]
  return "\n".join(text) + "\n"


FLAGS = flags.FLAGS


def define_flags() -> None:
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("workdir", None, "Where the sub-runs and study.md go (default: config.workdir).")
  config_flags.DEFINE_config_file("config", None, "A study config, e.g. configs/study_adain.py or "
                                  "configs/study_adain.py:demo.", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  config = FLAGS.config
  if config is None:
    sys.exit("error: pass a study config: python -m jaxtickets.study --config=configs/study_adain.py:demo")
  # A preempted sub-run's checkpoint is saved; the same command resumes the whole study.
  path = preempt.run_command(lambda: run(config, FLAGS.workdir or config.workdir), "jaxtickets.study")
  if path:
    print(f"The study's report is {path}.")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.parse_flags)
