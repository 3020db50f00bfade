"""A run's answer in words: the verdict table and the lines a run logs when it ends, report.md's tables' cells.

Shared by the run (which logs them), report.md and the study's study.md.
"""

import math

from jaxtickets.results import tables as results


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
