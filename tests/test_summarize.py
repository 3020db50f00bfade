"""results.tables.summarize and its words (results/text.py) on synthetic result rows whose verdicts are known."""

import math

import numpy as np
import pytest

from jaxtickets.core import evaluate
from jaxtickets.results import stats, tables as results, text as report_text
from jaxtickets.errors import UserError

TOLERANCE = 0.02
# 4 image combinations x 2 crops each.
NAMES = [f"content{k // 2}__style{k // 2}" for k in range(8)]
# Each replicate's dense network scores very differently (seeds move the loss by tens of percent), and some
# pairs are much harder than others.
DENSE_SCALE = {0: 1.0, 1: 1.6, 2: 2.5}
PAIR_LOSS = np.array([0.8, 0.9, 1.4, 1.3, 0.6, 0.7, 1.1, 1.0])


def _row(branch, replicate, round_, losses, *, sparsity=None, names=NAMES, **extra):
  losses = np.asarray(losses, np.float64)
  sparsity = 1 - 0.8 ** round_ if sparsity is None else sparsity
  row = dict(branch=branch, replicate=replicate, round=round_, sparsity_prunable=sparsity, sparsity_total=sparsity,
             sparsity_inference=sparsity, total=float(losses.mean()), per_pair={"total": list(losses)},
             pair_names=names, **extra)
  return row


def _dense(replicate):
  return DENSE_SCALE[replicate] * PAIR_LOSS


def _run(factors: dict[int, dict[int, float]], branch="imp", replicates=(0, 1, 2), jitter=0.002):
  """Dense rounds, and per round the ticket losses = dense x factor[replicate] x a small per-pair jitter."""
  rng = np.random.default_rng(0)
  rows = [_row("imp", rep, 0, _dense(rep)) for rep in replicates]
  for round_, per_rep in factors.items():
    for rep in replicates:
      rows.append(_row(branch, rep, round_, _dense(rep) * per_rep[rep] * np.exp(rng.normal(0, jitter, 8))))
  return rows


def _same(factor):
  return {rep: factor for rep in DENSE_SCALE}


def _by(summary, branch, round_):
  return next(r for r in summary if r["branch"] == branch and r["round"] == round_)


def test_known_verdicts():
  rows = _run({1: _same(1.0), 2: _same(1.2), 3: {0: 0.95, 1: 1.06, 2: 1.02}})
  summary = results.summarize(rows, TOLERANCE)
  assert [(r["branch"], r["round"]) for r in summary] == [("imp", 0), ("imp", 1), ("imp", 2), ("imp", 3)]
  assert _by(summary, "imp", 0)["verdict"] == ""  # the reference
  assert _by(summary, "imp", 1)["verdict"] == stats.MATCHES
  assert _by(summary, "imp", 2)["verdict"] == stats.DOES_NOT_MATCH
  assert _by(summary, "imp", 3)["verdict"] == stats.INCONCLUSIVE  # replicates disagree by +-5%
  for round_, row in ((1, _by(summary, "imp", 1)), (2, _by(summary, "imp", 2))):
    ticket = np.array([r["per_pair"]["total"] for r in rows if r["round"] == round_])
    dense = np.array([r["per_pair"]["total"] for r in rows if r["round"] == 0])
    # The geometric mean ratio over replicates and pairs (every combination has 2 crops, so crop averaging keeps it).
    assert row["relative_to_dense"] == pytest.approx(np.exp(np.mean(np.log(ticket / dense))) - 1, rel=1e-9)
    assert row["ci_low"] <= row["relative_to_dense"] <= row["ci_high"]
    assert (row["replicates"], row["pairs"], row["combinations"]) == (3, 8, 4)
  assert _by(summary, "imp", 2)["relative_to_dense"] == pytest.approx(0.2, abs=0.003)


def test_one_replicate_stays_inconclusive():
  summary = results.summarize(_run({1: _same(1.0), 2: _same(1.5)}, replicates=(0,)), TOLERANCE)
  assert [r["verdict"] for r in summary] == ["", stats.INCONCLUSIVE, stats.INCONCLUSIVE]


def test_each_ticket_is_paired_with_its_own_replicates_dense_round():
  """Tickets as good as their own dense networks, whose dense networks differ by a factor 2.5: paired with their
  own replicate they match; paired with another replicate's dense round the seeds' differences would swamp it."""
  rows = _run({1: _same(1.0)}, replicates=(0, 1, 2))
  # Replicates in any order, the rows of replicate 2 first, and a dense round whose tickets are not done yet.
  rows = sorted(rows, key=lambda r: (-r["replicate"], r["round"])) + [_row("imp", 7, 0, _dense(0) * 3)]
  row = _by(results.summarize(rows, TOLERANCE), "imp", 1)
  assert row["verdict"] == stats.MATCHES and row["replicates"] == 3
  ticket = np.array([r["per_pair"]["total"] for r in sorted(rows, key=lambda r: r["replicate"])
                     if r["round"] == 1])
  dense = np.array([_dense(rep) for rep in (0, 1, 2)])
  crossed = stats.relative_difference_interval(ticket, np.roll(dense, 1, axis=0), pair_names=NAMES)
  assert stats.verdict(crossed, TOLERANCE) != stats.MATCHES
  assert crossed.estimate == pytest.approx(row["relative_to_dense"])  # the same geometric mean, a wider interval
  # Relabelled so that each ticket sits with another replicate's dense round: the answer changes.
  shifted = [dict(r, replicate=(r["replicate"] + 1) % 3) if r["round"] == 0 and r["replicate"] < 3 else r
             for r in rows]
  assert _by(results.summarize(shifted, TOLERANCE), "imp", 1)["verdict"] != stats.MATCHES


def test_baseline_against_imp_and_its_sign():
  rows = _run({1: _same(1.0)}) + [
      r for r in _run({1: _same(1.15)}, branch="random_prune", jitter=0.003) if r["branch"] == "random_prune"]
  row = _by(results.summarize(rows, TOLERANCE), "random_prune", 1)
  assert row["vs_imp"] == pytest.approx(0.15, abs=0.005)  # the baseline's loss 15% above IMP's
  assert row["vs_imp_ci_low"] > 0 and row["vs_imp_verdict"] == stats.IMP_BETTER
  assert row["verdict"] == stats.DOES_NOT_MATCH
  # Swapping which branch is IMP and which the baseline flips the sign and the comparison.
  swap = {"imp": "random_prune", "random_prune": "imp"}
  swapped = [dict(r, branch=swap[r["branch"]]) if r["round"] > 0 else r for r in rows]
  row = _by(results.summarize(swapped, TOLERANCE), "random_prune", 1)
  assert row["vs_imp"] == pytest.approx(1 / 1.15 - 1, abs=0.005)
  assert row["vs_imp_ci_high"] < 0 and row["vs_imp_verdict"] == stats.IMP_WORSE


def test_highest_matching_headline_stops_at_a_gap():
  """Round 2 fails, round 3 matches: the headline stays at round 1; the sparsest matching round is round 3,
  exploratory."""
  summary = results.summarize(_run({1: _same(1.0), 2: _same(1.2), 3: _same(1.0)}), TOLERANCE)
  assert [r["verdict"] for r in summary[1:]] == [stats.MATCHES, stats.DOES_NOT_MATCH, stats.MATCHES]
  headline, sparsest = results.highest_matching(summary)["imp"]
  assert headline["round"] == 1 and sparsest["round"] == 3
  lines = report_text.matching_lines(summary, TOLERANCE)
  assert lines[0].startswith("Highest matching sparsity (imp): 0.2000") and "round 1" in lines[0]
  assert "Exploratory" in lines[1] and "round 3" in lines[1]
  assert "4 image combinations" in lines[0]


def test_crops_are_averaged_only_when_named():
  rows = _run({1: _same(1.0)})
  assert _by(results.summarize(rows, TOLERANCE), "imp", 1)["combinations"] == 4
  unnamed = [dict(r, pair_names=None) for r in rows]
  assert _by(results.summarize(unnamed, TOLERANCE), "imp", 1)["combinations"] == 8
  mixed = [dict(r, pair_names=list(reversed(NAMES))) if r["replicate"] == 1 else r for r in rows]
  with pytest.raises(UserError, match="differently named pairs"):
    results.summarize(mixed, TOLERANCE)


def test_the_estimator_is_named_in_the_words():
  summary = results.summarize(_run({1: _same(1.0)}), TOLERANCE)
  text = report_text.format_summary(summary)
  assert "geometric mean ratio of held-out total loss (ticket / its own replicate's dense network) - 1" in text
  assert "geometric mean ratio of held-out total loss" in results.match_rule(TOLERANCE)
  assert "mean relative difference" not in text + results.match_rule(TOLERANCE)


def test_learnability_columns_and_warning():
  def with_psnr(rows, recon, flat):
    return [dict(r, recon_psnr=recon + r["round"], flat_psnr=flat) for r in rows]

  learned = results.summarize(with_psnr(_run({1: _same(1.0)}), 24.0, 14.0), TOLERANCE)
  assert (learned[0]["recon_psnr"], learned[0]["flat_psnr"], learned[1]["recon_psnr"]) == (24.0, 14.0, 25.0)
  (line,) = report_text.learnability_lines(learned)
  assert "reconstruction PSNR 24.00 dB against 14.00 dB for a flat mean-colour image" in line
  assert "WARNING" not in report_text.format_summary(learned)
  flat = results.summarize(with_psnr(_run({1: _same(1.0)}), 15.0, 14.0), TOLERANCE)
  warning = ("the dense network has not learned to reconstruct its content in every replicate (less than 3 dB above "
             "a flat image): verdicts about its tickets say little about style transfer")
  assert warning in report_text.learnability_lines(flat)[1] and warning in report_text.format_summary(flat)
  # The worst replicate decides: a mean 4 dB above flat with one replicate 2 dB above still warns.
  uneven = [dict(r, recon_psnr=(16.0 if r["replicate"] == 0 else 19.0), flat_psnr=14.0)
            for r in _run({1: _same(1.0)})]
  check = results.dense_learnability(results.summarize(uneven, TOLERANCE))
  assert check["recon_psnr"] == pytest.approx(18.0) and check["worst_margin"] == pytest.approx(2.0)
  assert not check["learned"]
  assert "the lowest +2.00 dB from its flat image" in report_text.learnability_lines(results.summarize(uneven, TOLERANCE))[0]
  assert report_text.learnability_lines(results.summarize(_run({1: _same(1.0)}), TOLERANCE)) == []  # not recorded
  assert results.result_fields(("content", "style"), (), learnability=True)[-6:] == (
      "recon_psnr", "flat_psnr", "content", "style", "total", "relative_to_dense")


def test_replicate_spread_from_pruned_rounds():
  # Replicate factors exp(-s), 1, exp(s) in both rounds: each round's SD over replicates is s, pooled too.
  s = 0.03
  factors = {0: math.exp(-s), 1: 1.0, 2: math.exp(s)}
  rows = _run({1: factors, 2: factors}, jitter=0.0)
  spread = results.replicate_spread(rows)
  assert spread["source"] == "pruned" and spread["rounds"] == 2 and spread["df"] == 4
  assert spread["sd"] == pytest.approx(s, rel=1e-9)
  lines = report_text.planner_lines(rows, TOLERANCE)
  n2, n10 = stats.replicates_needed(s, 0.02), stats.replicates_needed(s, 0.10)
  assert "SD of the mean log loss ratio (ticket / dense) is 0.0300" in lines[0] and "IMP's 2 pruned" in lines[0]
  assert f"2% needs {n2}, 10% needs {n10} replicates" in lines[1]
  assert n2 > n10 >= 2


def test_replicate_spread_of_a_dense_only_pilot():
  rows = _run({})  # imp.rounds = 0: the dense rounds alone
  spread = results.replicate_spread(rows)
  logs = [math.log(DENSE_SCALE[rep] * PAIR_LOSS.mean()) for rep in (0, 1, 2)]
  assert spread["source"] == "dense" and spread["sd"] == pytest.approx(math.sqrt(2) * np.std(logs, ddof=1))
  assert "dense-only pilot" in report_text.planner_lines(rows, TOLERANCE)[0]
  assert results.replicate_spread(_run({1: _same(1.0)}, replicates=(0,))) is None
  assert "unmeasured" in report_text.planner_lines(_run({}, replicates=(0,)), TOLERANCE)[0]
  # A tolerance other than 2% and 10% is answered too.
  assert "5% needs" in report_text.planner_lines(rows, 0.05)[1]


def test_early_bird_against_full_imp():
  """An early-bird run 5% worse than the reference's IMP in every cell, and its dense rounds stopped at half the
  steps: the comparison finds the 5%, calls IMP better, and counts the steps each run spent."""
  def steps(rows, dense_steps):
    return [dict(r, steps=dense_steps if r["round"] == 0 else 100) for r in rows]

  reference = steps(_run({1: _same(1.0), 2: _same(1.1)}), 100)
  bird = steps([dict(r, per_pair={"total": list(1.05 * np.asarray(r["per_pair"]["total"]))}) for r in reference], 50)
  out = results.early_bird_comparison(bird, reference)
  assert [c["round"] for c in out] == [0, 1, 2]
  for c in out:
    assert c["interval"].estimate == pytest.approx(0.05, abs=1e-9) and c["comparison"] == stats.IMP_BETTER
    assert c["early_bird_total"] == pytest.approx(1.05 * c["imp_total"])
  assert [(c["imp_steps"], c["early_bird_steps"]) for c in out] == [(100, 50), (200, 150), (300, 250)]
  # Only the replicates both runs have are paired; none in common leaves the round out.
  assert results.early_bird_comparison([r for r in bird if r["replicate"] == 0],
                                       [r for r in reference if r["replicate"] != 0]) == []


# ----------------------------------------------------------------------------- collapsed runs


def _dead(rows, **which):
  """`rows` with the runs named in `which` ('<branch>_<round>_<replicate>': reason) marked collapsed."""
  return [dict(r, collapsed=which.get(f"{r['branch']}_{r['round']}_{r['replicate']}")) for r in rows]


def test_a_collapsed_dense_round_drops_its_replicate_from_every_comparison():
  """Replicate 0's dense network died (twice the loss), so its ticket looks 50% better than it: left in, it would
  drag the estimate down and widen the interval; left out, the other three replicates say +30%, does not match."""
  replicates = (0, 1, 2, 3)
  DENSE_SCALE[3] = 1.2
  try:
    rows = _run({1: {0: 1.0, 1: 1.3, 2: 1.3, 3: 1.3}}, replicates=replicates)
  finally:
    del DENSE_SCALE[3]
  rows = [dict(r, per_pair={"total": list(2 * np.asarray(r["per_pair"]["total"]))}, total=2 * r["total"])
          if (r["round"], r["replicate"]) == (0, 0) else r for r in rows]
  rows = _dead(rows, imp_0_0=evaluate.BELOW_FLAT)
  summary = results.summarize(rows, TOLERANCE)
  dense, pruned = _by(summary, "imp", 0), _by(summary, "imp", 1)
  assert (dense["replicates"], dense["collapsed"], dense["dense_collapsed"]) == (3, 0, 1)
  assert (pruned["replicates"], pruned["collapsed"], pruned["dense_collapsed"]) == (3, 0, 1)
  assert pruned["relative_to_dense"] == pytest.approx(0.3, abs=0.003)
  assert pruned["verdict"] == stats.DOES_NOT_MATCH and "note" not in pruned
  # What the other three replicates alone give, interval and all.
  alone = results.summarize([r for r in rows if r["replicate"] != 0], TOLERANCE)
  for key in ("relative_to_dense", "ci_low", "ci_high", "verdict", "total"):
    assert pruned[key] == _by(alone, "imp", 1)[key]
  kept = results.summarize(_dead(rows), TOLERANCE)  # had it been averaged in
  assert _by(kept, "imp", 1)["relative_to_dense"] < 0.15 and _by(kept, "imp", 1)["verdict"] != stats.DOES_NOT_MATCH
  assert report_text.collapsed_line(summary) == ("Collapsed (excluded from the intervals): dense replicate 0 "
                                            "(reconstruction below a flat image: all its comparisons dropped)")
  text = report_text.format_summary(summary)
  assert report_text.collapsed_line(summary) in text
  assert results.replicate_spread(rows) == results.replicate_spread([r for r in rows if r["replicate"] != 0])


def test_tickets_never_match_because_their_dense_networks_died():
  """Every dense network died: its tickets are all half its loss, tightly. Averaged in, that would match (the CPU
  study's trap); with the dead dense rounds named, nothing is left to compare and the verdict is inconclusive."""
  rows = [dict(r, per_pair={"total": list(2 * np.asarray(r["per_pair"]["total"]))}, total=2 * r["total"])
          if r["round"] == 0 else r for r in _run({1: _same(1.0)})]
  assert _by(results.summarize(rows, TOLERANCE), "imp", 1)["verdict"] == stats.MATCHES
  rows = _dead(rows, imp_0_0=evaluate.CONSTANT_OUTPUT, imp_0_1=evaluate.NAN_LOSS, imp_0_2=evaluate.BELOW_FLAT)
  summary = results.summarize(rows, TOLERANCE)
  row = _by(summary, "imp", 1)
  assert row["verdict"] == stats.INCONCLUSIVE and math.isnan(row["relative_to_dense"]) and row["replicates"] == 0
  assert math.isfinite(row["total"])  # what the collapsed runs scored, still shown beside replicates = 0
  assert (row["replicates"], row["collapsed"], row["dense_collapsed"]) == (0, 0, 3)
  assert results.highest_matching(summary)["imp"] == (None, None)
  assert report_text.learnability_lines(summary) == [
      "Dense round: every dense network collapsed (replicate 0 (constant output); replicate 1 (NaN loss); replicate 2 "
      "(reconstruction below a flat image)): there is nothing to compare the tickets with."]
  assert results.replicate_spread(rows) is None


def test_a_cell_with_a_collapsed_ticket_never_matches():
  """Four replicates whose tickets equal their dense networks, but replicate 3's ticket died (NaN losses): the three
  survivors' interval lies below the tolerance, yet the round is inconclusive, and says why."""
  DENSE_SCALE[3] = 1.2
  try:
    rows = _run({1: _same(1.0) | {3: 1.0}, 2: _same(1.3) | {3: 1.3}}, replicates=(0, 1, 2, 3))
  finally:
    del DENSE_SCALE[3]
  rows = [dict(r, per_pair={"total": [math.nan] * 8}, total=math.nan) if (r["round"], r["replicate"]) == (1, 3)
          else r for r in rows]
  rows = _dead(rows, imp_1_3=evaluate.NAN_LOSS, imp_2_3=evaluate.CONSTANT_OUTPUT)
  summary = results.summarize(rows, TOLERANCE)
  row = _by(summary, "imp", 1)
  assert (row["replicates"], row["collapsed"], row["dense_collapsed"]) == (3, 1, 0)
  assert row["ci_high"] < TOLERANCE and row["verdict"] == stats.INCONCLUSIVE
  assert row["note"] == "1 of 4 tickets collapsed" and math.isfinite(row["total"])
  assert report_text.verdict_text(row) == "inconclusive (1 of 4 tickets collapsed)"
  worse = _by(summary, "imp", 2)  # a collapse does not hide a failure
  assert worse["verdict"] == stats.DOES_NOT_MATCH and worse["collapsed"] == 1
  text = report_text.format_summary(summary)
  assert "inconclusive (1 of 4 tickets collapsed)" in text
  assert ("Collapsed (excluded from the intervals): imp round 1 replicate 3 (NaN loss); imp round 2 replicate 3 "
          "(constant output)") in text
  # The same cell never matches through any path: no collapsed ticket lets a match through.
  for kept in (1, 2):
    few = results.summarize([r for r in rows if r["replicate"] in (kept, 3)], TOLERANCE)
    assert _by(few, "imp", 1)["verdict"] == stats.INCONCLUSIVE
    assert _by(few, "imp", 1)["note"] == "1 of 2 tickets collapsed; 1 usable replicate"
  assert results.replicate_spread(rows) == results.replicate_spread([r for r in rows if r["replicate"] != 3])


def test_a_collapsed_imp_ticket_cannot_make_imp_better():
  """The baseline is 15% worse than IMP, but one IMP ticket died: left out, it would flatter IMP, so the comparison
  says inconclusive rather than 'imp better'; a dead baseline ticket likewise cannot make IMP worse."""
  rows = _run({1: _same(1.0)}) + [
      r for r in _run({1: _same(1.15)}, branch="random_prune", jitter=0.003) if r["branch"] == "random_prune"]
  assert _by(results.summarize(rows, TOLERANCE), "random_prune", 1)["vs_imp_verdict"] == stats.IMP_BETTER
  row = _by(results.summarize(_dead(rows, imp_1_2=evaluate.CONSTANT_OUTPUT), TOLERANCE), "random_prune", 1)
  assert row["vs_imp"] == pytest.approx(0.15, abs=0.005) and row["vs_imp_verdict"] == stats.INCONCLUSIVE
  swap = {"imp": "random_prune", "random_prune": "imp"}
  swapped = _dead([dict(r, branch=swap[r["branch"]]) if r["round"] > 0 else r for r in rows],
                  random_prune_1_2=evaluate.CONSTANT_OUTPUT)
  assert _by(results.summarize(swapped, TOLERANCE), "random_prune", 1)["vs_imp_verdict"] == stats.INCONCLUSIVE


def test_dense_learnability_leaves_out_and_names_the_collapsed():
  rows = [dict(r, recon_psnr=5.0 if r["replicate"] == 0 else 24.0, flat_psnr=14.0) for r in _run({1: _same(1.0)})]
  rows = _dead(rows, imp_0_0=evaluate.BELOW_FLAT)
  summary = results.summarize(rows, TOLERANCE)
  check = results.dense_learnability(summary)
  assert (check["recon_psnr"], check["replicates"], check["learned"]) == (24.0, 2, True)
  assert check["collapsed"] == [dict(replicate=0, reason=evaluate.BELOW_FLAT)]
  (line,) = report_text.learnability_lines(summary)
  assert line.endswith("mean over 2 replicate(s), the lowest +10.00 dB from its flat image; left out, collapsed: "
                       "replicate 0 "
                       "(reconstruction below a flat image)).")
  every = results.summarize(_dead(rows, **{f"imp_0_{k}": evaluate.BELOW_FLAT for k in (0, 1, 2)}), TOLERANCE)
  assert report_text.learnability_lines(every)[0].startswith("Dense round: every dense network collapsed (replicate 0 ")
