"""Every published verdict can be recomputed: summary.csv rebuilt from pairs.csv alone, by a second implementation
that shares no code with jaxtickets (csv, numpy and scipy.stats.t only)."""

import collections
import csv
import math
import os

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.core import evaluate
from jaxtickets.results import tables as results
from helpers import tiny_config

TERMS = ("content", "style")
CONTENTS, STYLES, CROPS = ("cat", "dog"), ("ink", "oil", "wave"), 2
NAMES = [f"{c}__{s}" for c in CONTENTS for s in STYLES for _ in range(CROPS)]
REPLICATES = (0, 1, 2, 3)
# Per (branch, round): each replicate's ticket / dense factor; None marks a ticket that collapsed (NaN losses).
FACTORS = {("imp", 1): {0: 1.0, 1: 1.004, 2: 0.997, 3: 1.0},  # matches
           ("imp", 2): {0: 1.3, 1: 1.25, 2: 1.35, 3: 1.3},  # does not match
           ("imp", 3): {0: 1.0, 1: None, 2: 1.003, 3: 0.998},  # would match, but a ticket collapsed
           ("random_prune", 1): {0: 1.02, 1: 1.2, 2: 0.9, 3: 1.1},  # inconclusive
           ("random_prune", 2): {0: None, 1: None, 2: 1.5, 3: 1.4}}  # one usable replicate
DENSE_COLLAPSED = 3  # its dense round reconstructs below a flat image: every comparison of replicate 3 is dropped
TOLERANCE = 0.05


def _meta(branch, round_, rep, rng):
  """A ticket's metadata as the evaluation saves it: per-pair losses per term, the pairs' names, the collapse."""
  # The replicate's dense losses: pairs differ, seeds shift them; its tickets are these times a factor.
  dense = np.exp(np.random.default_rng(rep).normal(0.0, 0.3, size=len(NAMES)) + 0.2 * rep)
  factor = 1.0 if round_ == 0 else FACTORS[branch, round_][rep]
  if factor is None:
    per_pair = {k: [math.nan] * len(NAMES) for k in (*TERMS, "total")}
  else:
    noise = lambda: np.exp(rng.normal(0.0, 0.003, size=len(NAMES)))
    content, style = 0.6 * dense * factor * noise(), 0.4 * dense * factor * noise()
    per_pair = {"content": list(content), "style": list(style), "total": list(content + style)}
  per_pair["output_std"] = list(rng.uniform(0.05, 0.2, size=len(NAMES)))
  metrics = {k: float(np.mean(v)) for k, v in per_pair.items()}
  metrics.update(round=round_, steps=3, rewind_step=0, relative_to_dense=0.0, per_pair=per_pair, pair_names=NAMES,
                 terms=list(TERMS), extra_metrics=[], recon_psnr=20.0, flat_psnr=14.0)
  if round_ == 0 and rep == DENSE_COLLAPSED:
    metrics["recon_psnr"] = 9.0
  metrics["collapsed"] = evaluate.collapse_reason(metrics)
  sp = 1 - 0.8 ** round_
  entry = lambda: {"sparsity": sp, "remaining": 100, "size": 125}
  return {"metrics": metrics,
          "sparsity": {"prunable": entry(), "total": entry(), "inference": entry(), "groups": {"decoder": entry()}}}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
  """A workdir whose tickets hold only their metadata, tables written by results.write_results."""
  rng = np.random.default_rng(5)
  metas = {}
  keys = [("imp", 0)] + list(FACTORS)
  for rep in REPLICATES:
    for branch, round_ in keys:
      path = workdir_lib.ticket_dir(str(tmp_path), branch, round_, rep)
      os.makedirs(path)
      metas[path] = _meta(branch, round_, rep, rng)
  monkeypatch.setattr(checkpoint, "ticket_exists", lambda path: path in metas)
  monkeypatch.setattr(checkpoint, "load_ticket_metadata", lambda path: metas[path])
  config = tiny_config(imp__branches="imp,random_prune", imp__replicates=len(REPLICATES),
                       imp__match_tolerance=TOLERANCE)
  results.write_results(str(tmp_path), config.model.name, config_lib.resolve(config).protocol, skips={})
  return str(tmp_path)


def _read(workdir, name):
  with open(os.path.join(workdir, name), newline="") as f:
    return list(csv.DictReader(f))


def _recompute(pairs, tolerance, confidence, metric="total"):
  """{(branch, round): (replicates, collapsed, dense_collapsed, estimate, low, high, verdict)} from pairs.csv's rows:
  per replicate the mean over image combinations of the crops' mean log(ticket / dense), then a t interval."""
  tickets = collections.defaultdict(list)
  for p in pairs:
    tickets[p["branch"], int(p["round"]), int(p["replicate"])].append(p)
  dense = {rep: rows for (branch, round_, rep), rows in tickets.items() if (branch, round_) == ("imp", 0)}
  cells = collections.defaultdict(dict)
  for (branch, round_, rep), rows in tickets.items():
    if (branch, round_) != ("imp", 0) and rep in dense:
      cells[branch, round_][rep] = rows
  out = {}
  for cell, reps in cells.items():
    means, dead, dense_dead = [], 0, 0
    for rep, rows in reps.items():
      if dense[rep][0]["collapsed"]:
        dense_dead += 1
        continue
      if rows[0]["collapsed"]:
        dead += 1
        continue
      ref = {p["pair"]: float(p[metric]) for p in dense[rep]}
      crops = collections.defaultdict(list)
      for p in rows:
        crops[p["pair_name"]].append(math.log(float(p[metric]) / ref[p["pair"]]))
      means.append(np.mean([np.mean(v) for v in crops.values()]))
    r = len(means)
    if r == 0:
      estimate = low = high = math.nan
    elif r == 1:
      estimate, low, high = means[0], -math.inf, math.inf
    else:
      estimate = float(np.mean(means))
      half = scipy_stats.t.ppf((1 + confidence) / 2, r - 1) * np.std(means, ddof=1) / math.sqrt(r)
      low, high = estimate - half, estimate + half
    estimate, low, high = math.expm1(estimate), math.expm1(low), math.expm1(high)
    if r >= 2 and high < tolerance and not dead:
      verdict = "matches"
    elif r >= 2 and low > tolerance:
      verdict = "does not match"
    else:
      verdict = "inconclusive"
    out[cell] = (r, dead, dense_dead, estimate, low, high, verdict)
  return out


def _number(text):
  return math.nan if text == "" else float(text)


def test_summary_csv_is_recomputed_from_pairs_csv_alone(workdir):
  pairs = _read(workdir, workdir_lib.PAIRS_CSV)
  settings = checkpoint.load_json(os.path.join(workdir, workdir_lib.SUMMARY_JSON))
  summary = {(r["branch"], int(r["round"])): r for r in _read(workdir, workdir_lib.SUMMARY_CSV)}
  for metric, prefix in (("total", ""), ("content", "content_"), ("style", "style_")):
    again = _recompute(pairs, settings["match_tolerance"], settings["confidence"], metric)
    assert set(again) == set(summary) - {("imp", 0)}
    for cell, (r, dead, dense_dead, estimate, low, high, verdict) in again.items():
      row = summary[cell]
      assert (int(row["replicates"]), int(row["collapsed"]), int(row["dense_collapsed"])) == (r, dead, dense_dead)
      estimate_key = "relative_to_dense" if metric == "total" else f"{metric}_relative"
      for key, want in ((estimate_key, estimate), (f"{prefix}ci_low", low), (f"{prefix}ci_high", high)):
        got = _number(row[key])
        assert got == pytest.approx(want, abs=1e-6, nan_ok=True), (cell, key)
      if metric == "total":
        assert row["verdict"] == verdict, cell
  # The design covers every path: a match, a failure, a match undone by a collapse, one usable replicate.
  verdicts = {cell: summary[cell]["verdict"] for cell in FACTORS}
  assert verdicts == {("imp", 1): "matches", ("imp", 2): "does not match", ("imp", 3): "inconclusive",
                      ("random_prune", 1): "inconclusive", ("random_prune", 2): "inconclusive"}
  assert float(summary["imp", 3]["ci_high"]) < TOLERANCE  # the survivors alone would have matched
  assert summary["random_prune", 2]["replicates"] == "1" and summary["random_prune", 2]["ci_high"] == "inf"


def test_pairs_csv_holds_every_ticket_and_pair(workdir):
  pairs = _read(workdir, workdir_lib.PAIRS_CSV)
  assert list(pairs[0])[:11] == ["branch", "round", "replicate", "pair", "pair_name", "content_image", "style_image",
                                 "collapsed", "content", "style", "total"]
  assert list(pairs[0])[11:] == ["output_std"]  # what the evaluation recorded beyond the losses
  tickets = len(REPLICATES) * (1 + len(FACTORS))
  assert len(pairs) == tickets * len(NAMES)
  first = [p for p in pairs if (p["branch"], p["round"], p["replicate"]) == ("imp", "1", "2")]
  assert [p["pair"] for p in first] == [str(j) for j in range(len(NAMES))]
  assert [(p["content_image"], p["style_image"]) for p in first[:3]] == [("cat", "ink"), ("cat", "ink"),
                                                                          ("cat", "oil")]
  reasons = {(p["branch"], int(p["round"]), int(p["replicate"])): p["collapsed"] for p in pairs}
  assert reasons["imp", 0, DENSE_COLLAPSED] == evaluate.BELOW_FLAT
  assert reasons["imp", 3, 1] == reasons["random_prune", 2, 0] == evaluate.NAN_LOSS
  assert sum(bool(v) for v in reasons.values()) == 4
  # Full precision: the ticket's losses read back exactly.
  row = next(r for r in results.collect_rows(workdir) if (r["branch"], r["round"], r["replicate"]) == ("imp", 1, 2))
  assert [float(p["total"]) for p in first] == row["per_pair"]["total"]
  table = {(r["branch"], r["round"], r["replicate"]): r["collapsed"] for r in _read(workdir, workdir_lib.RESULTS_CSV)}
  assert table["imp", "0", str(DENSE_COLLAPSED)] == evaluate.BELOW_FLAT and table["imp", "1", "0"] == ""
  assert len(table) == tickets  # the collapsed runs keep their rows
  collapsed = checkpoint.load_json(os.path.join(workdir, workdir_lib.SUMMARY_JSON))["collapsed"]
  assert {(c["branch"], c["round"], c["replicate"], c["dense"]) for c in collapsed} == {
      ("imp", 0, DENSE_COLLAPSED, True), ("imp", 3, 1, False), ("random_prune", 2, 0, False),
      ("random_prune", 2, 1, False)}
