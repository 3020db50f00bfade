"""Tests for jaxtickets.results.stats on synthetic losses whose answer is known."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxtickets.results import stats
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


# The held-out set as a content x style grid, the sizes of each effect on the log ratio (simulations below).
EFFECTS = dict(content=0.10, style=0.08, content_style=0.04, seed=0.03, seed_content=0.02, seed_style=0.02,
               noise=0.03)


def _grid_names(contents, styles, crops):
  return [f"content{c}__style{s}" for c in range(contents) for s in range(styles) for _ in range(crops)]


def _grid_studies(rng, studies, r, contents, styles, crops, *, sd=EFFECTS, mu=0.05, theta=None, dead=None):
  """(log ratios (studies, r, contents x styles x crops), theta (studies,)) of simulated studies on a grid.

  D_ijkl = mu + c_j + s_k + (cs)_jk + a_i + (ac)_ij + (as)_ik + e_ijkl for seed i, content j, style k, crop l; the
  image effects are drawn afresh per study. theta = mu + mean_j c_j + mean_k s_k + mean_jk (cs)_jk is the log ratio
  on that study's held-out set. theta given: mu is set per study so that theta is exactly that. dead = (p, shift):
  each seed is dead with probability p and then shifted by `shift`, centred so that the mixture's mean stays theta.
  """
  draw = lambda name, *shape: rng.normal(0.0, sd[name], size=(studies, *shape))
  images = (draw("content", 1, contents, 1, 1) + draw("style", 1, 1, styles, 1)
            + draw("content_style", 1, contents, styles, 1))
  image_mean = images.mean(axis=(1, 2, 3, 4))
  mu = np.full(studies, mu) if theta is None else theta - image_mean
  d = (mu[:, None, None, None, None] + images + draw("seed", r, 1, 1, 1) + draw("seed_content", r, contents, 1, 1)
       + draw("seed_style", r, 1, styles, 1) + draw("noise", r, contents, styles, crops))
  if dead is not None:
    p, shift = dead
    d = d + shift * ((rng.random((studies, r, 1, 1, 1)) < p) - p)
  return d.reshape(studies, r, -1), mu + image_mean


def _intervals(d, names, rng):
  """stats.relative_difference_interval of every simulated study, its dense losses varying by seed and pair."""
  dense = np.exp(rng.normal(0.0, 0.4, size=d.shape[1:]))
  return [stats.relative_difference_interval(dense * np.exp(di), dense, pair_names=names) for di in d]


def _coverage(intervals, theta):
  return float(np.mean([iv.low <= math.expm1(t) <= iv.high for iv, t in zip(intervals, theta)]))


# ----------------------------------------------------------------------------- the estimator


def test_hand_computed_interval():
  """R = 3 replicates on a 2 x 2 grid, the interval worked by hand: each replicate's mean log ratio over the four
  combinations, their mean and SD, and scipy's t quantile with 2 degrees of freedom."""
  names = ["a__x", "a__y", "b__x", "b__y"]
  d = np.array([[0.10, 0.30, -0.20, 0.40],
                [0.00, 0.20, 0.10, 0.50],
                [0.30, -0.10, 0.20, 0.20]])
  m = [(0.10 + 0.30 - 0.20 + 0.40) / 4, (0.00 + 0.20 + 0.10 + 0.50) / 4, (0.30 - 0.10 + 0.20 + 0.20) / 4]
  mean = sum(m) / 3
  sd = math.sqrt(sum((x - mean) ** 2 for x in m) / 2)
  q = scipy_stats.t.ppf(0.975, 2)
  half = q * sd / math.sqrt(3)
  interval = stats.relative_difference_interval(np.exp(d), np.ones_like(d), pair_names=names)
  assert interval.log_mean == pytest.approx(mean, rel=1e-12, abs=1e-12)
  assert interval.se == pytest.approx(sd / math.sqrt(3), rel=1e-12)
  assert interval.quantile == pytest.approx(q, rel=1e-12)
  assert interval.estimate == pytest.approx(math.expm1(mean), rel=1e-12)
  assert interval.low == pytest.approx(math.expm1(mean - half), rel=1e-12)
  assert interval.high == pytest.approx(math.expm1(mean + half), rel=1e-12)
  assert (interval.replicates, interval.pairs, interval.units, interval.replicates_ok) == (3, 4, 4, True)
  # scipy's own one-sample t interval of the replicates' means says the same.
  ci = scipy_stats.ttest_1samp(m, 0.0).confidence_interval(0.95)
  assert math.log1p(interval.low) == pytest.approx(ci.low, rel=1e-12)
  assert math.log1p(interval.high) == pytest.approx(ci.high, rel=1e-12)


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
  """Named pairs average their crops first: each combination weighs the same in a replicate's mean whatever its
  number of crops. With equal crops per combination the replicate means, so the interval, do not change."""
  rng = np.random.default_rng(22)
  ticket, dense = _study(rng, 3, 1.05, seed_sd=0.002, image_sd=0.05, crop_sd=0.002)
  named = stats.relative_difference_interval(ticket, dense, pair_names=NAMES)
  d = np.log(ticket / dense).reshape(3, 16, 4).mean(axis=2)
  by_hand = stats.replicate_interval(d, pairs=64)
  for field in ("estimate", "low", "high", "se", "quantile"):
    assert getattr(named, field) == pytest.approx(getattr(by_hand, field), rel=1e-12)
  assert (named.units, named.pairs) == (by_hand.units, by_hand.pairs) == (16, 64)
  unnamed = stats.relative_difference_interval(ticket, dense)
  assert unnamed.units == 64
  for field in ("estimate", "low", "high"):
    assert getattr(unnamed, field) == pytest.approx(getattr(named, field), rel=1e-10)
  # Unequal crops: a combination with three crops counts once, not three times.
  names = ["a__x", "a__x", "a__x", "b__y"]
  d = np.array([[0.0, 0.0, 0.0, 0.4], [0.1, 0.1, 0.1, 0.3]])
  interval = stats.relative_difference_interval(np.exp(d), np.ones_like(d), pair_names=names)
  assert interval.log_mean == pytest.approx((0.2 + 0.2) / 2)
  assert interval.units == 2 and interval.pairs == 4


def test_the_interval_does_not_depend_on_the_order_of_replicates_or_pairs():
  rng = np.random.default_rng(23)
  ticket, dense = _study(rng, 4, 1.02, seed_sd=0.03, image_sd=0.02, crop_sd=0.04)
  first = stats.relative_difference_interval(ticket, dense, pair_names=NAMES)
  rows, cols = rng.permutation(4), rng.permutation(64)
  again = stats.relative_difference_interval(ticket[rows][:, cols], dense[rows][:, cols],
                                             pair_names=[NAMES[k] for k in cols])
  for field in ("estimate", "low", "high", "se", "quantile"):
    assert getattr(again, field) == pytest.approx(getattr(first, field), rel=1e-10)


@pytest.mark.parametrize("r,p,confidence", [(2, 1, 0.95), (4, 1, 0.9), (3, 6, 0.95), (5, 16, 0.8)])
def test_the_interval_is_the_t_interval_of_the_replicates_means(r, p, confidence):
  """Whatever the number of pairs: the t interval (R - 1 df) of the R replicates' mean log ratios. Checked against
  scipy.stats' own t distribution: 12.706 at 1 degree of freedom, 95%."""
  rng = np.random.default_rng(8)
  dense = _losses(rng, r, p, pair_effects=_pair_effects(rng, p))
  losses = dense * rng.uniform(1.0, 1.1, size=dense.shape)
  interval = stats.relative_difference_interval(losses, dense, confidence=confidence)
  m = np.log(losses / dense).mean(axis=1)
  quantile = scipy_stats.t.ppf((1 + confidence) / 2, r - 1)
  assert interval.quantile == pytest.approx(quantile, rel=1e-9)
  assert interval.se == pytest.approx(m.std(ddof=1) / math.sqrt(r), rel=1e-9)
  assert math.log1p(interval.high) - interval.log_mean == pytest.approx(quantile * interval.se, rel=1e-9)
  if (r, confidence) == (2, 0.95):
    assert quantile == pytest.approx(12.706, abs=1e-3)


# ----------------------------------------------------------------------------- coverage and power


@pytest.mark.parametrize("r", [3, 6])
@pytest.mark.parametrize("contents,styles,crops", [(4, 4, 2), (8, 8, 1)])
def test_coverage_of_the_held_out_sets_ratio_is_nominal(r, contents, styles, crops):
  """2,000 simulated studies on a content x style grid, every effect non-zero (content, style, their interaction,
  seed, seed x content, seed x style, crop noise): the 95% interval covers theta, the ratio on the study's own
  held-out set, at least 94% of the time, and at most 96.5%, so an interval made wide enough never to miss fails
  too. Measured: 95.6% and 95.0% at R = 3 and 6 on 4 x 4 (2 crops), 95.2% and 94.5% on 8 x 8."""
  rng = np.random.default_rng(100 * r + contents)
  d, theta = _grid_studies(rng, 2000, r, contents, styles, crops)
  coverage = _coverage(_intervals(d, _grid_names(contents, styles, crops), rng), theta)
  assert 0.94 <= coverage <= 0.965, coverage


def _two_way_crossed_interval(d, confidence=0.95):
  """The interval this module used to compute: seeds x combinations as two crossed random factors, the combinations
  independent draws, Banerjee's half-width."""
  r, j = d.shape
  mean = d.mean()
  ms_rows = j * np.sum((d.mean(axis=1) - mean) ** 2) / (r - 1)
  ms_cols = r * np.sum((d.mean(axis=0) - mean) ** 2) / (j - 1)
  q = (1 + confidence) / 2
  half = math.sqrt(scipy_stats.t.ppf(q, r - 1) ** 2 * ms_rows / (r * j)
                   + scipy_stats.t.ppf(q, j - 1) ** 2 * ms_cols / (r * j))
  return mean - half, mean + half


def test_the_two_way_crossed_model_misses_on_a_grid():
  """Why the two-way model went: it claims images in general (mu, the mean over a population of images) but takes
  the 16 combinations of 4 contents x 4 styles for 16 independent images, when they hold only 4 contents' and 4
  styles' effects; so it covers mu far less than 95% of the time. For this held-out set (theta) it is needlessly
  wide. The replicate-level interval covers theta at the nominal level (the coverage test above)."""
  rng = np.random.default_rng(7)
  mu = 0.05
  d, theta = _grid_studies(rng, 2000, 6, 4, 4, 1, mu=mu)
  old = [_two_way_crossed_interval(di) for di in d]
  covers_mu = np.mean([low <= mu <= high for low, high in old])
  covers_theta = np.mean([low <= t <= high for (low, high), t in zip(old, theta)])
  assert covers_mu < 0.80, covers_mu  # measured 71.8%
  assert covers_theta > 0.99, covers_theta  # measured 99.95%: wider than it needs to be for this set


@pytest.mark.parametrize("p,r,measured", [(0.1, 3, 0.480), (0.1, 6, 0.471), (0.3, 3, 0.624), (0.3, 6, 0.866),
                                          (0.3, 10, 0.962)])
def test_coverage_when_seeds_are_bimodal(p, r, measured):
  """Seeds that are alive or dead: a fraction p of the trainings shifted by +1 on the log scale (2.7 times the loss)
  on top of the grid's effects, theta the mixture's mean. A study with no dead seed, probability (1 - p)^R, gets a
  tight interval around the alive seeds and misses theta: the coverage falls far below 95% at small R (the
  measured values, stated in docs/protocol.md). Asserted: at least the measured coverage less 3 points, and below
  90% where it was measured there (a real undercoverage, not simulation noise)."""
  rng = np.random.default_rng(int(1000 * p) + r)
  d, theta = _grid_studies(rng, 2000, r, 4, 4, 1, dead=(p, 1.0))
  coverage = _coverage(_intervals(d, _grid_names(4, 4, 1), rng), theta)
  assert coverage >= measured - 0.03, coverage
  if measured < 0.9:
    assert coverage < 0.9, coverage


@pytest.mark.parametrize("ratio,want", [(1.0, stats.MATCHES), (1.25, stats.DOES_NOT_MATCH)])
def test_power_with_small_noise(ratio, want):
  """A ticket equal to its dense network (or 25% worse) on this held-out set, small seed-level noise, 5 replicates,
  10% tolerance: the verdict says so in at least 80% of 2,000 studies, so a procedure that always answers
  inconclusive fails."""
  rng = np.random.default_rng(30)
  small = dict(EFFECTS, seed=0.01, seed_content=0.01, seed_style=0.01, noise=0.02)
  d, _ = _grid_studies(rng, 2000, 5, 4, 4, 2, sd=small, theta=np.full(2000, math.log(ratio)))
  verdicts = [stats.verdict(iv, 0.10) for iv in _intervals(d, _grid_names(4, 4, 2), rng)]
  assert verdicts.count(want) >= 0.8 * len(verdicts), {v: verdicts.count(v) for v in set(verdicts)}


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
  assert interval.quantile == pytest.approx(scipy_stats.t.ppf(0.975, 2))  # the replicates' (2 df), not the pairs'


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
  assert interval.estimate == pytest.approx(1.0)  # clearly worse over these pairs, yet seed noise is unmeasured
  assert (interval.low, interval.high, interval.se) == (-1.0, math.inf, math.inf) and not interval.replicates_ok
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
  assert one_seed.high == math.inf and stats.comparison(one_seed) == stats.INCONCLUSIVE


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
  """Studies on a 4 x 4 grid (2 crops) of a ticket as good as its dense network on this held-out set, the
  replicates' means scattering by `sd` (split over seed, seed x content, seed x style and crop noise) and the images'
  own effects as large as ever: at the planned R at least 80% match (less simulation error, 2,000 studies;
  measured 83.7% and 87.4%), at half of it clearly fewer."""
  contents = styles = 4
  crops = 2
  # Each term's share of the replicate means' variance: 40% seed, 20% each interaction, 20% noise.
  spread = dict(EFFECTS, seed=math.sqrt(0.4) * sd, seed_content=math.sqrt(0.2 * contents) * sd,
                seed_style=math.sqrt(0.2 * styles) * sd, noise=math.sqrt(0.2 * contents * styles * crops) * sd)
  r = stats.replicates_needed(sd, tolerance)
  rng = np.random.default_rng(40)
  names = _grid_names(contents, styles, crops)

  def power(n, studies=2000):
    d, _ = _grid_studies(rng, studies, n, contents, styles, crops, sd=spread, theta=np.zeros(studies))
    return np.mean([stats.verdict(iv, tolerance) == stats.MATCHES for iv in _intervals(d, names, rng)])

  assert power(r) >= 0.76
  assert power(max(2, r // 2), studies=500) <= 0.6


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
