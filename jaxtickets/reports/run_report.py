"""report.md: a run's settings, verdicts, learnability check, replicate spread, IMP vs each baseline and figures,
rebuilt from the saved tickets (results.write_results) into the workdir by process 0."""

import os
import shlex

import jax

from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets import config as config_lib, storage
from jaxtickets.results import tables as results
from jaxtickets.errors import UserError
from jaxtickets.results.text import (_interval_cell, collapsed_line, interval_text, learnability_lines, matching_lines, pct,
                                    planner_lines, table, verdict_text)
from jaxtickets.reports.figures import plot_curves, plot_early_bird, plot_grid, plot_layers, plot_stability


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


def format_markdown(run, rows: list[dict], summary: list[dict], workdir: str, figures: dict,
                    notes: list[str]) -> str:
  """report.md of a run (its settings.RunSettings): settings, the verdicts with intervals, IMP vs the baselines,
  figures, all results."""
  spec, m, ip = run.model, run.model.options, run.protocol
  sp = ip.pruning
  dense = [r for r in rows if r["branch"] == "imp" and r["round"] == 0]
  reps = sorted({r["replicate"] for r in rows})
  pairs = sorted({len(r["per_pair"]["total"]) for r in rows})
  combos = sorted({r["combinations"] for r in summary})
  done = max((r["round"] for r in rows if r["branch"] == "imp"), default=0)
  vgg = (f"`demo`: the demo loss network, {config_lib.DEMO_VGG_DESCRIPTION}" if spec.vgg_weights == config_lib.DEMO_VGG
         else f"`{spec.vgg_weights}`" if spec.vgg_weights else
         "**random** (no pretrained VGG: the losses are not meaningful)")
  from jaxtickets.weights import files as weights  # pylint: disable=g-import-not-at-top
  vgg += weights.vgg_record_note(workdir)  # its SHA-256 and whether it is the released file (the run's vgg.json)
  rewinds = sorted({r["rewind_step"] for r in rows})
  rewind = ", ".join("0 (the initial weights)" if k == 0 else f"{k} (the weights after {k} dense steps)"
                     for k in rewinds)
  cap = f", no layer pruned beyond {sp.layer_cap:.0%}" if sp.layer_cap < 1.0 else ""
  settings = [
      ["model", f"{m.name} (width {m.width:g}, {m.dtype})"],
      ["encoder", "trained (part of the pruned network)" if m.train_encoder else "fixed (the frozen VGG)"],
      ["VGG weights", vgg],
      ["deviations from the reference", "; ".join(reference_deviations(spec)) or "none"],
      ["pruning scope", f"`{','.join(sp.scope)}` ({sp.method} magnitude, {sp.fraction:.0%} of the remaining "
                        f"weights per round{cap})"],
      ["rewind point used", rewind],
      ["rounds", f"{done} pruned round(s) done of {ip.rounds} configured; {run.step.steps:,} steps per round"],
      ["replicates", f"{len(reps)} done of {ip.replicates} configured (seeds {ip.seed} + r); each "
                     f"point rests on {len(reps)} replicate(s) x {', '.join(map(str, pairs))} held-out pairs "
                     f"({', '.join(map(str, combos))} image combinations, the units the pairs' crops are averaged "
                     "into)" + ("; collapsed runs are left out (the verdicts count the replicates used)"
                                if results.collapsed_runs(summary) else "")],
      ["branches", _branches_line(ip.branches, rows)],
      ["matching", results.match_rule(ip.match_tolerance)],
  ]
  if dense:
    settings.append(["parameters (dense)", f"{dense[0]['remaining_total']:,} in all, "
                                           f"{dense[0]['remaining_prunable']:,} prunable"])
  rebuild = f"python -m jaxtickets.report --workdir={shlex.quote(workdir)}"
  text = [f"# Lottery tickets of {m.name}", "", f"Workdir `{workdir}`. `{rebuild}` rebuilds this report from the "
          "run's tickets.", "",
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
  if ip.early_bird is not None:
    text += ["## Early bird", "",
             f"The dense round drew the mask pruning would give every {ip.early_bird.every} steps and stopped "
             f"once consecutive masks differed in less than {ip.early_bird.epsilon:.1%} of the prunable "
             f"weights for {ip.early_bird.patience} draws in a row. The dense round is the verdicts' "
             "reference, so an early-stopped one is a weaker reference: the study's early_bird comparison judges "
             "these tickets against full IMP instead.", "",
             table(["replicate", "stopped at step", "steps trained", "of"],
                    [[str(r["replicate"]), str(r["early_bird_step"]), str(r["steps"]), str(run.step.steps)]
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


def reference_deviations(spec) -> list[str]:
  """Each setting of the run's model (a settings.ModelSpec) that differs from the reference implementation's, in
  words."""
  from jaxtickets import models  # pylint: disable=import-outside-toplevel  (imports the model's module)
  m = spec.options
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
  if spec.vgg_weights == config_lib.DEMO_VGG:
    out.append("loss network trained here, not ImageNet's VGG")
  elif not spec.vgg_weights:
    out.append("random loss VGG")
  return out


def _branches_line(wanted, rows) -> str:
  done = sorted({r["branch"] for r in rows}, key=results.branch_order)
  missing = [b for b in wanted if b not in done]
  return ", ".join(done) + (f" (still to run: {', '.join(missing)})" if missing else "")


def write_report(workdir: str, run=None, *, grid: bool = True) -> str | None:
  """Writes the results tables, the figures and report.md into `workdir` for its run (a settings.RunSettings, by
  default its saved config.json's); returns report.md's path (None off process 0)."""
  if jax.process_index() != 0:
    return None
  run = run if run is not None else workdir_lib.load_run_settings(workdir)
  rows, summary = results.write_results(workdir, run.model.name, run.protocol)
  if not rows:
    raise UserError(f"No finished ticket in '{os.path.join(workdir, workdir_lib.TICKETS)}': run python -m "
                    f"jaxtickets.main --workdir={workdir} first.")
  names = workdir_lib.FIGURES
  at = lambda figure: os.path.join(workdir, names[figure])
  figures, notes = {}, []
  title = f"{run.model.name}: held-out loss vs sparsity, geometric mean ratio to the dense network"
  plot_curves(summary, run.protocol.match_tolerance, at("curves"), title, terms=results.run_terms(rows)[0])
  figures["curves"] = names["curves"]
  notes += _collapse_notes(workdir, rows)
  first_rep = min(r["replicate"] for r in rows)
  imp_rows = sorted((r for r in rows if r["branch"] == "imp" and r["replicate"] == first_rep), key=lambda r: r["round"])
  if imp_rows:
    final = imp_rows[-1]
    meta = checkpoint.load_ticket_metadata(workdir_lib.ticket_dir(workdir, "imp", final["round"], first_rep))
    plot_layers(meta["sparsity"], at("layers"),
                f"{run.model.name}: per-layer sparsity, IMP round {final['round']} (replicate {first_rep})")
    figures["layers"] = names["layers"]
  birds = [r for r in rows if r["branch"] == "imp" and r["round"] == 0 and r.get("early_bird_history")]
  if birds and run.protocol.early_bird is not None:
    plot_early_bird(birds, run.protocol.early_bird.epsilon, at("early_bird"))
    figures["early_bird"] = names["early_bird"]
  if grid and imp_rows:
    try:
      plot_grid(run.model, run.data, imp_rows, workdir, at("grid"))
      figures["grid"] = names["grid"]
    except UserError as e:  # e.g. the evaluation images moved since the run: the rest of the report still holds
      notes.append(f"The image grid was skipped: {e}")
  path = os.path.join(workdir, workdir_lib.REPORT)
  text = format_markdown(run, rows, summary, workdir, figures, notes)
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
  plot_stability(rows, os.path.join(workdir, workdir_lib.STABILITY_FIGURE))
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
  from jaxtickets.core import sparsity

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
