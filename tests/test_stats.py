"""Tests for jaxtickets.stats on synthetic losses whose answer is known."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxtickets import stats
from jaxtickets.errors import UserError

TOLERANCE = 0.02
# The evaluation's design at paper scale: 4 content x 4 style images, 4 crops of each combination, 64 pairs.
COMBINATIONS = [f"content{c}__style{s}" for c in range(4) for s in range(4)]
NAMES = [name for name in COMBINATIONS for _ in range(4)]


def _losses(rng, r, p, *, pair_effects, scale=1.0, replicate_sd=0.02, noise_sd=0.05):
  """Losses scale * (1 + u_i + v_j + e_ij): u a fresh replicate effect, v the given pair effects, e cell noise."""
  u = rng.normal(0.0, replicate_sd, size=(r, 1))
  e = rng.normal(0.0, noise_sd, size=(r, p))
  return scale * (1.0 + u + pair_effects[None, :] + e)


def _pair_effects(rng, p):
  # Pairs differ a lot (some styles are much harder), but every network sees the same pairs.
  return rng.uniform(-0.4, 0.4, size=p)


def _study(rng, r, ratio, *, seed_sd, image_sd, crop_sd):
  """(ticket, dense) losses (r, 64) of the paper's design whose true geometric mean ratio is `ratio`.

  log ticket - log dense = log(ratio) + a_i (the replicate's seed) + b_j (the image combination, shared by its four
  crops) + e_ij (each crop); the dense losses themselves vary by pair and seed far more than the ratio does.
  """
  combination = np.repeat(np.arange(len(COMBINATIONS)), 4)
  dense = np.exp(rng.normal(0.0, 0.4, size=64)[None] + rng.normal(0.0, 0.3, size=(r, 1))
                 + rng.normal(0.0, 0.05, size=(r, 64)))
  log_ratio = (math.log(ratio) + rng.normal(0.0, seed_sd, size=(r, 1))
               + rng.normal(0.0, image_sd, size=len(COMBINATIONS))[combination][None]
               + rng.normal(0.0, crop_sd, size=(r, 64)))
  return dense * np.exp(log_ratio), dense


def _verdict(losses, dense, **kwargs):
  return stats.verdict(stats.relative_difference_interval(losses, dense, **kwargs), TOLERANCE)


# ----------------------------------------------------------------------------- the estimator


def test_hand_computed_interval():
  """R = 2 replicates x J = 2 combinations of log ratios [[0, .2], [.2, .6]], worked by hand: mean .25; row means
  .1, .4 and column means .1, .4, so MS_rows = MS_cols = 2 (.15^2 + .15^2) / 1 = .09; V_rows = V_cols = .09 / 4;
  half-width sqrt(t_1^2 V_rows + t_1^2 V_cols) = 12.7062 x sqrt(.045) = 2.6954."""
  d = np.array([[0.0, 0.2], [0.2, 0.6]])
  interval = stats.relative_difference_interval(np.exp(d), np.ones_like(d))
  assert interval.log_mean == pytest.approx(0.25)
  assert interval.estimate == pytest.approx(math.exp(0.25) - 1)
  assert interval.se == pytest.approx(math.sqrt(0.045))
  assert interval.quantile == pytest.approx(12.7062, abs=1e-4)
  assert interval.low == pytest.approx(math.exp(0.25 - 2.6954) - 1, abs=1e-4)
  assert interval.high == pytest.approx(math.exp(0.25 + 2.6954) - 1, rel=1e-4)
  assert (interval.replicates, interval.pairs, interval.units, interval.replicates_ok) == (2, 2, 2, True)


def test_interval_against_an_anova_by_projections():
  """The same interval from another formulation: crops averaged by a pair-to-combination matrix, the sums of squares
  as squared norms of least-squares projections onto the replicate and combination dummies, and a check that the
  two-way decomposition adds up."""
  rng = np.random.default_rng(20)
  names = ["a__x", "b__y", "a__x", "c__z", "b__y", "c__z", "a__x", "d__w"]  # 4 combinations, 1-3 crops, shuffled
  ticket, dense = rng.uniform(0.5, 2.0, size=(2, 3, 8))
  interval = stats.relative_difference_interval(ticket, dense, pair_names=names)

  units = sorted(set(names), key=names.index)
  average = np.array([[name == u for u in units] for name in names], np.float64)
  average /= average.sum(axis=0)
  d = np.log(ticket / dense) @ average  # (3, 4)
  r, j = d.shape
  y = d.ravel()
  rows = np.kron(np.eye(r), np.ones((j, 1)))
  cols = np.kron(np.ones((r, 1)), np.eye(j))
  ones = np.ones((r * j, 1))

  def fitted(x):
    return x @ np.linalg.lstsq(x, y, rcond=None)[0]

  ss_rows = np.sum((fitted(rows) - fitted(ones)) ** 2)
  ss_cols = np.sum((fitted(cols) - fitted(ones)) ** 2)
  ss_error = np.sum((y - fitted(np.hstack([rows, cols]))) ** 2)
  assert ss_rows + ss_cols + ss_error == pytest.approx(np.sum((y - y.mean()) ** 2))
  v_rows, v_cols = ss_rows / (r - 1) / (r * j), ss_cols / (j - 1) / (r * j)
  half = math.sqrt(scipy_stats.t.ppf(0.975, r - 1) ** 2 * v_rows + scipy_stats.t.ppf(0.975, j - 1) ** 2 * v_cols)
  assert interval.units == 4 and interval.pairs == 8
  assert interval.log_mean == pytest.approx(y.mean(), rel=1e-12)
  assert interval.se == pytest.approx(math.sqrt(v_rows + v_cols), rel=1e-10)
  assert math.log1p(interval.low) == pytest.approx(y.mean() - half, rel=1e-10)
  assert math.log1p(interval.high) == pytest.approx(y.mean() + half, rel=1e-10)


def test_point_estimate_is_the_geometric_mean_ratio_and_symmetric_on_the_log_scale():
  rng = np.random.default_rng(6)
  dense = _losses(rng, 4, 16, pair_effects=_pair_effects(rng, 16))
  losses = dense * rng.uniform(0.9, 1.3, size=dense.shape)
  interval = stats.relative_difference_interval(losses, dense)
  assert interval.estimate == pytest.approx(np.exp(np.mean(np.log(losses / dense))) - 1.0, rel=1e-12)
  assert interval.low <= interval.estimate <= interval.high
  log = np.log1p([interval.low, interval.estimate, interval.high])
  assert log[2] - log[1] == pytest.approx(log[1] - log[0])


def test_no_interval_reaches_below_minus_100_percent_and_one_bad_run_does_not_dominate():
  rng = np.random.default_rng(21)
  dense = _losses(rng, 3, 16, pair_effects=_pair_effects(rng, 16))
  collapsed = dense * np.array([[0.01], [1.0], [1.0]])  # one replicate's ticket scores 100 times better
  interval = stats.relative_difference_interval(collapsed, dense)
  assert -1.0 < interval.low < interval.estimate
  diverged = dense * np.array([[50.0], [1.0], [1.0]])  # one replicate's ticket 50 times worse
  geometric = stats.relative_difference_interval(diverged, dense).estimate
  assert geometric == pytest.approx(50 ** (1 / 3) - 1)  # 2.68; a ratio of means would say about 16
  assert diverged.mean() / dense.mean() - 1 > 10


def test_crops_of_one_image_combination_are_one_unit():
  """Named pairs average their crops before the interval; without names every crop would count as evidence."""
  rng = np.random.default_rng(22)
  # Image effects dominate and the four crops of a combination agree: 16 units of evidence, not 64.
  ticket, dense = _study(rng, 3, 1.05, seed_sd=0.002, image_sd=0.05, crop_sd=0.002)
  named = stats.relative_difference_interval(ticket, dense, pair_names=NAMES)
  d = np.log(ticket / dense).reshape(3, 16, 4).mean(axis=2)
  by_hand = stats.crossed_interval(d, pairs=64)
  for field in ("estimate", "low", "high", "se", "quantile"):
    assert getattr(named, field) == pytest.approx(getattr(by_hand, field), rel=1e-12)
  assert (named.units, named.pairs) == (by_hand.units, by_hand.pairs) == (16, 64)
  unnamed = stats.relative_difference_interval(ticket, dense)
  assert unnamed.units == 64 and unnamed.estimate == pytest.approx(named.estimate)
  assert unnamed.high - unnamed.low < 0.6 * (named.high - named.low)  # crops as independent: far too narrow


def test_the_interval_does_not_depend_on_the_order_of_replicates_or_pairs():
  rng = np.random.default_rng(23)
  ticket, dense = _study(rng, 4, 1.02, seed_sd=0.03, image_sd=0.02, crop_sd=0.04)
  first = stats.relative_difference_interval(ticket, dense, pair_names=NAMES)
  rows, cols = rng.permutation(4), rng.permutation(64)
  again = stats.relative_difference_interval(ticket[rows][:, cols], dense[rows][:, cols],
                                             pair_names=[NAMES[k] for k in cols])
  for field in ("estimate", "low", "high", "se", "quantile"):
    assert getattr(again, field) == pytest.approx(getattr(first, field), rel=1e-10)


@pytest.mark.parametrize("r,p,confidence,df", [(2, 1, 0.95, 1), (4, 1, 0.9, 3), (1, 6, 0.95, 5)])
def test_one_level_alone_is_the_plain_t_interval(r, p, confidence, df):
  """One pair: the replicate-level t interval (s^2 / R, R - 1 df); one replicate: the pairs' (P - 1 df). Checked
  against scipy.stats' own t distribution: 12.706 at 1 degree of freedom, 95%."""
  rng = np.random.default_rng(8)
  dense = _losses(rng, r, p, pair_effects=_pair_effects(rng, p))
  losses = dense * rng.uniform(1.0, 1.1, size=dense.shape)
  interval = stats.relative_difference_interval(losses, dense, confidence=confidence)
  d = np.log(losses / dense).ravel()
  quantile = scipy_stats.t.ppf((1 + confidence) / 2, df)
  assert interval.quantile == pytest.approx(quantile, rel=1e-9)
  assert interval.se == pytest.approx(d.std(ddof=1) / math.sqrt(d.size), rel=1e-9)
  assert math.log1p(interval.high) - interval.log_mean == pytest.approx(quantile * interval.se, rel=1e-9)
  if (r, confidence) == (2, 0.95):
    assert quantile == pytest.approx(12.706, abs=1e-3)


# ----------------------------------------------------------------------------- coverage and power


@pytest.mark.parametrize("r,seed_sd,image_sd,crop_sd", [
    (3, 0.03, 0.02, 0.04),  # seeds, images and crops all matter
    (5, 0.03, 0.02, 0.04),
    (2, 0.05, 0.0, 0.02),  # seeds dominate: where Satterthwaite's estimated df undercovers (about 89%)
])
def test_coverage_of_the_true_ratio_is_nominal(r, seed_sd, image_sd, crop_sd):
  """2,000 simulated studies: the 95% interval (nominal 95%) covers the true ratio at least 94% of the time, and at
  most 99.5% of the time, so an interval made wide enough never to miss fails too."""
  rng = np.random.default_rng(100 + r)
  truth = 1.05
  studies = 2000
  covered = 0
  for _ in range(studies):
    ticket, dense = _study(rng, r, truth, seed_sd=seed_sd, image_sd=image_sd, crop_sd=crop_sd)
    interval = stats.relative_difference_interval(ticket, dense, pair_names=NAMES)
    covered += interval.low <= truth - 1 <= interval.high
  assert 0.94 <= covered / studies <= 0.995, covered / studies


@pytest.mark.parametrize("truth,want", [(1.0, stats.MATCHES), (1.1, stats.DOES_NOT_MATCH)])
def test_power_with_small_noise(truth, want):
  """A ticket equal to its dense network (or 10% worse), small noise, 5 replicates, 2% tolerance: the verdict says
  so in at least 80% of studies, so a procedure that always answers inconclusive fails."""
  rng = np.random.default_rng(30)
  studies = 500
  verdicts = [_verdict(*_study(rng, 5, truth, seed_sd=0.005, image_sd=0.005, crop_sd=0.01), pair_names=NAMES)
              for _ in range(studies)]
  assert verdicts.count(want) >= 0.8 * studies, {v: verdicts.count(v) for v in set(verdicts)}


def test_equal_distributions_rarely_do_not_match():
  rng = np.random.default_rng(0)
  verdicts = []
  for _ in range(200):
    v = _pair_effects(rng, 64)
    dense = _losses(rng, 3, 64, pair_effects=v)
    losses = _losses(rng, 3, 64, pair_effects=v)
    verdicts.append(_verdict(losses, dense))
  counts = {name: verdicts.count(name) for name in (stats.MATCHES, stats.DOES_NOT_MATCH, stats.INCONCLUSIVE)}
  assert sum(counts.values()) == 200
  assert counts[stats.DOES_NOT_MATCH] <= 10, counts
  assert counts[stats.MATCHES] + counts[stats.INCONCLUSIVE] >= 190, counts


def test_clearly_worse_does_not_match():
  rng = np.random.default_rng(1)
  dense = _losses(rng, 3, 64, pair_effects=_pair_effects(rng, 64))
  losses = dense * 1.3 + rng.normal(0.0, 0.01, size=dense.shape)
  interval = stats.relative_difference_interval(losses, dense)
  assert interval.low > TOLERANCE
  assert stats.verdict(interval, TOLERANCE) == stats.DOES_NOT_MATCH


def test_clearly_equal_with_low_noise_matches():
  rng = np.random.default_rng(2)
  dense = _losses(rng, 3, 64, pair_effects=_pair_effects(rng, 64))
  losses = dense * (1.0 + rng.normal(0.0, 0.001, size=dense.shape))
  interval = stats.relative_difference_interval(losses, dense)
  assert abs(interval.estimate) < 1e-3
  assert stats.verdict(interval, TOLERANCE) == stats.MATCHES
  assert interval.replicates == 3 and interval.pairs == interval.units == 64 and interval.replicates_ok
  # Between the replicates' t quantile (2 df) and the pairs' (63 df).
  assert scipy_stats.t.ppf(0.975, 63) <= interval.quantile <= scipy_stats.t.ppf(0.975, 2)


def test_tiny_sample_is_inconclusive():
  rng = np.random.default_rng(3)
  v = _pair_effects(rng, 2)
  dense = _losses(rng, 2, 2, pair_effects=v, noise_sd=0.1)
  losses = _losses(rng, 2, 2, pair_effects=v, noise_sd=0.1)
  interval = stats.relative_difference_interval(losses, dense)
  assert interval.replicates_ok and interval.quantile == pytest.approx(scipy_stats.t.ppf(0.975, 1))
  assert stats.verdict(interval, TOLERANCE) == stats.INCONCLUSIVE


def test_one_replicate_is_always_inconclusive():
  rng = np.random.default_rng(4)
  dense = _losses(rng, 1, 64, pair_effects=_pair_effects(rng, 64))
  interval = stats.relative_difference_interval(2.0 * dense, dense)
  assert interval.estimate == pytest.approx(1.0)
  assert interval.low > TOLERANCE  # clearly worse over these pairs, yet seed noise is unmeasured
  assert not interval.replicates_ok and interval.quantile == pytest.approx(scipy_stats.t.ppf(0.975, 63))
  assert stats.verdict(interval, TOLERANCE) == stats.INCONCLUSIVE
  same = stats.relative_difference_interval(dense, dense)
  assert stats.verdict(same, TOLERANCE) == stats.INCONCLUSIVE


def test_one_replicate_one_pair_is_unbounded():
  interval = stats.relative_difference_interval([[1.2]], [[1.0]])
  assert interval.estimate == pytest.approx(0.2)
  assert interval.low == -1.0 and interval.high == math.inf  # exp(-inf) - 1 and exp(inf) - 1
  assert stats.verdict(interval, TOLERANCE) == stats.INCONCLUSIVE


# ----------------------------------------------------------------------------- baseline against IMP


def test_paired_difference():
  rng = np.random.default_rng(12)
  v = _pair_effects(rng, 64)
  imp = _losses(rng, 3, 64, pair_effects=v)
  better = stats.paired_difference_interval(imp * 1.2, imp)
  assert better.estimate == pytest.approx(0.2)  # the baseline's loss 20% above IMP's: IMP is better
  assert stats.comparison(better) == stats.IMP_BETTER
  same = stats.paired_difference_interval(imp, imp)
  assert same.estimate == 0.0
  assert stats.comparison(same) == stats.INCONCLUSIVE
  worse = stats.paired_difference_interval(imp, imp * 1.2)
  assert worse.estimate == pytest.approx(1 / 1.2 - 1)
  assert stats.comparison(worse) == stats.IMP_WORSE
  one_seed = stats.paired_difference_interval(imp[:1] * 1.2, imp[:1])
  assert one_seed.low > 0 and stats.comparison(one_seed) == stats.INCONCLUSIVE


def test_paired_difference_of_equal_branches_is_inconclusive():
  rng = np.random.default_rng(13)
  v = _pair_effects(rng, 64)
  a, b = _losses(rng, 3, 64, pair_effects=v), _losses(rng, 3, 64, pair_effects=v)
  interval = stats.paired_difference_interval(a, b)
  assert interval.low < 0 < interval.high
  assert stats.comparison(interval) == stats.INCONCLUSIVE


# ----------------------------------------------------------------------------- the replicate planner


def test_replicates_needed_by_formula():
  assert stats.replicates_needed(0.0, 0.02) == 2
  needed = [stats.replicates_needed(sd, 0.02) for sd in (0.005, 0.01, 0.02, 0.05)]
  assert needed == sorted(needed) and needed[-1] > needed[0]
  assert stats.replicates_needed(0.05, 0.10) < stats.replicates_needed(0.05, 0.02)
  r = stats.replicates_needed(0.02, 0.02)
  k = 0.02 / math.log(1.02)
  bound = lambda n: ((scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1)) * k) ** 2
  assert r >= bound(r) and r - 1 < bound(r - 1)  # the smallest R that satisfies it


@pytest.mark.parametrize("sd,tolerance", [(0.02, 0.02), (0.05, 0.10)])
def test_replicates_needed_reach_the_power_in_simulation(sd, tolerance):
  """Studies of a ticket as good as its dense network whose replicates' mean log ratios scatter by `sd`: at the
  planned R about 80% match, at half of it clearly fewer."""
  r = stats.replicates_needed(sd, tolerance)
  rng = np.random.default_rng(40)

  def power(n, studies=400):
    hits = 0
    for _ in range(studies):
      ticket = np.exp(rng.normal(0.0, sd, size=(n, 1)))
      hits += stats.verdict(stats.relative_difference_interval(ticket, np.ones((n, 1))), tolerance) == stats.MATCHES
    return hits / studies

  assert power(r) >= 0.75
  assert power(max(2, r // 2)) <= 0.6


@pytest.mark.parametrize("args", [(-0.1, 0.02), (math.nan, 0.02), (0.01, 0.0), (0.01, 0.02, 0.3), (0.01, 0.02, 1.0)])
def test_replicates_needed_refuses_bad_input(args):
  with pytest.raises(UserError):
    stats.replicates_needed(*args)


# ----------------------------------------------------------------------------- highest matching


def _rows(*verdicts, sparsities=None):
  sparsities = sparsities or [1 - 0.8 ** k for k in range(1, len(verdicts) + 1)]
  rows = [{'round': 0, 'sparsity_prunable': 0.0, 'verdict': stats.MATCHES}]
  return rows + [{'round': k, 'sparsity_prunable': s, 'verdict': v}
                 for k, (v, s) in enumerate(zip(verdicts, sparsities), start=1)]


def test_highest_matching():
  m, i, d = stats.MATCHES, stats.INCONCLUSIVE, stats.DOES_NOT_MATCH
  conservative, sparsest = stats.highest_matching(_rows(m, m, i, m))
  assert conservative['round'] == 2 and sparsest['round'] == 4
  conservative, sparsest = stats.highest_matching(list(reversed(_rows(m, m, i, m))))  # order does not matter
  assert conservative['round'] == 2 and sparsest['round'] == 4
  conservative, sparsest = stats.highest_matching(_rows(d, m, m))
  assert conservative is None and sparsest['round'] == 3
  assert stats.highest_matching(_rows(i, d)) == (None, None)
  assert stats.highest_matching(_rows()) == (None, None)  # round 0 alone, matching, is no ticket
  conservative, sparsest = stats.highest_matching(_rows(m, m, m))
  assert conservative['round'] == sparsest['round'] == 3


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize('losses, dense', [
    (np.ones((3, 4)), np.ones((3, 5))),
    (np.ones(4), np.ones(4)),
    (np.ones((2, 3, 4)), np.ones((2, 3, 4))),
    (np.ones((0, 4)), np.ones((0, 4))),
    (np.ones((3, 4)), np.full((3, 4), np.nan)),
    (np.full((3, 4), np.inf), np.ones((3, 4))),
    (np.ones((3, 4)), np.zeros((3, 4))),
    (-np.ones((3, 4)), np.ones((3, 4))),
])
def test_bad_inputs_raise(losses, dense):
  with pytest.raises(UserError):
    stats.relative_difference_interval(losses, dense)


def test_bad_paired_inputs_and_settings_raise():
  with pytest.raises(UserError):
    stats.paired_difference_interval(np.ones((3, 4)), np.ones((3, 5)))
  with pytest.raises(UserError):
    stats.relative_difference_interval(np.ones((3, 4)), np.ones((3, 4)), confidence=95)
  with pytest.raises(UserError):
    stats.relative_difference_interval(np.ones((3, 4)), np.ones((3, 4)), pair_names=["a", "b", "c"])
