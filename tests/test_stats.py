"""Tests for jaxtickets.stats on synthetic losses whose answer is known."""

import math

import numpy as np
import pytest

from jaxtickets import stats
from jaxtickets.errors import UserError

TOLERANCE = 0.02


def _losses(rng, r, p, *, pair_effects, scale=1.0, replicate_sd=0.02, noise_sd=0.05):
  """Losses scale * (1 + u_i + v_j + e_ij): u a fresh replicate effect, v the given pair effects, e cell noise."""
  u = rng.normal(0.0, replicate_sd, size=(r, 1))
  e = rng.normal(0.0, noise_sd, size=(r, p))
  return scale * (1.0 + u + pair_effects[None, :] + e)


def _pair_effects(rng, p):
  # Pairs differ a lot (some styles are much harder), but every network sees the same pairs.
  return rng.uniform(-0.4, 0.4, size=p)


def _verdict(losses, dense, **kwargs):
  return stats.verdict(stats.relative_difference_interval(losses, dense, **kwargs), TOLERANCE)


def test_equal_distributions_rarely_do_not_match():
  rng = np.random.default_rng(0)
  verdicts = []
  for sim in range(200):
    v = _pair_effects(rng, 64)
    dense = _losses(rng, 3, 64, pair_effects=v)
    losses = _losses(rng, 3, 64, pair_effects=v)
    verdicts.append(_verdict(losses, dense, n_boot=500, seed=sim))
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
  assert interval.replicates == 3 and interval.pairs == 64 and interval.df == 2 and interval.replicates_ok


def test_tiny_sample_is_inconclusive():
  rng = np.random.default_rng(3)
  v = _pair_effects(rng, 2)
  dense = _losses(rng, 2, 2, pair_effects=v, noise_sd=0.1)
  losses = _losses(rng, 2, 2, pair_effects=v, noise_sd=0.1)
  interval = stats.relative_difference_interval(losses, dense)
  assert interval.df == 1 and interval.replicates_ok
  assert stats.verdict(interval, TOLERANCE) == stats.INCONCLUSIVE


def test_one_replicate_is_always_inconclusive():
  rng = np.random.default_rng(4)
  dense = _losses(rng, 1, 64, pair_effects=_pair_effects(rng, 64))
  interval = stats.relative_difference_interval(2.0 * dense, dense)
  assert interval.estimate == pytest.approx(1.0)
  assert interval.low > TOLERANCE  # clearly worse over these pairs, yet seed noise is unmeasured
  assert not interval.replicates_ok and interval.df == 63
  assert stats.verdict(interval, TOLERANCE) == stats.INCONCLUSIVE
  same = stats.relative_difference_interval(dense, dense)
  assert stats.verdict(same, TOLERANCE) == stats.INCONCLUSIVE


def test_one_replicate_one_pair_is_unbounded():
  interval = stats.relative_difference_interval([[1.2]], [[1.0]])
  assert interval.estimate == pytest.approx(0.2)
  assert interval.low == -math.inf and interval.high == math.inf
  assert stats.verdict(interval, TOLERANCE) == stats.INCONCLUSIVE


def test_interval_covers_the_true_ratio():
  rng = np.random.default_rng(5)
  truth = 0.05
  sims = 300
  covered = 0
  for sim in range(sims):
    v = _pair_effects(rng, 32)
    dense = _losses(rng, 5, 32, pair_effects=v)
    losses = _losses(rng, 5, 32, pair_effects=v, scale=1.0 + truth)
    interval = stats.relative_difference_interval(losses, dense, n_boot=500, seed=sim)
    covered += interval.low <= truth <= interval.high
  assert covered >= 0.9 * sims, covered / sims


def test_point_estimate_is_the_ratio_of_means():
  rng = np.random.default_rng(6)
  dense = _losses(rng, 4, 16, pair_effects=_pair_effects(rng, 16))
  losses = dense * 1.1
  interval = stats.relative_difference_interval(losses, dense, n_boot=200)
  assert interval.estimate == pytest.approx(losses.sum() / dense.sum() - 1.0, rel=1e-12)
  assert interval.low <= interval.estimate <= interval.high
  assert interval.high - interval.estimate == pytest.approx(interval.estimate - interval.low)


@pytest.mark.parametrize("r,confidence", [(2, 0.95), (4, 0.9), (1, 0.95)])
def test_half_width_is_the_t_quantile_times_the_se(r, confidence):
  """The half-width is Student's t quantile (R - 1 degrees of freedom; P - 1 with one replicate) times the SE,
  checked against scipy.stats' own t distribution: 12.706 at 1 degree of freedom, 95%."""
  from scipy import stats as scipy_stats

  rng = np.random.default_rng(8)
  dense = _losses(rng, r, 6, pair_effects=_pair_effects(rng, 6))
  interval = stats.relative_difference_interval(dense * 1.05, dense, n_boot=300, confidence=confidence)
  df = r - 1 if r > 1 else 5
  quantile = scipy_stats.t.ppf((1 + confidence) / 2, df)
  assert interval.df == df and interval.high - interval.estimate == pytest.approx(quantile * interval.se, rel=1e-9)
  if (r, confidence) == (2, 0.95):
    assert quantile == pytest.approx(12.706, abs=1e-3)


def test_same_seed_same_interval():
  rng = np.random.default_rng(7)
  v = _pair_effects(rng, 16)
  dense, losses = _losses(rng, 3, 16, pair_effects=v), _losses(rng, 3, 16, pair_effects=v)
  first = stats.relative_difference_interval(losses, dense, seed=11)
  assert stats.relative_difference_interval(losses, dense, seed=11) == first
  assert stats.relative_difference_interval(losses, dense, seed=12).se != first.se


def test_pairs_only_se_agrees_with_plain_bootstrap_and_delta_method():
  rng = np.random.default_rng(8)
  p = 40
  dense = _losses(rng, 1, p, pair_effects=_pair_effects(rng, p))
  losses = _losses(rng, 1, p, pair_effects=_pair_effects(rng, p), scale=1.05)
  se = stats.relative_difference_interval(losses, dense, n_boot=20000, seed=0).se
  # Plain bootstrap over pairs, one resample at a time by indexing.
  boot = np.random.default_rng(9)
  samples = []
  for _ in range(1000):
    j = boot.integers(0, p, size=p)
    samples.append(losses[0, j].mean() / dense[0, j].mean() - 1.0)
  assert se == pytest.approx(np.std(samples, ddof=1), rel=0.1)
  # Delta method for a ratio of means: SE = sd(L - ratio * D) / (sqrt(P) * mean(D)), plug-in variance.
  ratio = losses.mean() / dense.mean()
  delta = np.std(losses[0] - ratio * dense[0]) / (math.sqrt(p) * dense.mean())
  assert se == pytest.approx(delta, rel=0.1)


def test_crossed_se_agrees_with_resampling_by_indexing():
  rng = np.random.default_rng(10)
  r, p = 4, 24
  v = _pair_effects(rng, p)
  dense = _losses(rng, r, p, pair_effects=v, replicate_sd=0.05)
  losses = _losses(rng, r, p, pair_effects=v, replicate_sd=0.05, scale=1.1)
  interval = stats.relative_difference_interval(losses, dense, n_boot=20000, seed=0)
  # The crossed bootstrap written out: replicates and pairs drawn independently, the same cells for both arrays.
  boot = np.random.default_rng(11)
  samples = []
  for _ in range(2000):
    i = boot.integers(0, r, size=r)
    j = boot.integers(0, p, size=p)
    samples.append(losses[i][:, j].mean() / dense[i][:, j].mean() - 1.0)
  assert interval.se == pytest.approx(np.std(samples, ddof=1), rel=0.1)
  assert interval.df == r - 1


def test_paired_difference():
  rng = np.random.default_rng(12)
  v = _pair_effects(rng, 64)
  dense = _losses(rng, 3, 64, pair_effects=v)
  imp = _losses(rng, 3, 64, pair_effects=v)
  better = stats.paired_difference_interval(imp * 1.2, imp, dense)
  assert better.estimate == pytest.approx(0.2 * imp.mean() / dense.mean())
  assert stats.comparison(better) == stats.IMP_BETTER
  same = stats.paired_difference_interval(imp, imp, dense)
  assert same.estimate == 0.0
  assert stats.comparison(same) == stats.INCONCLUSIVE
  worse = stats.paired_difference_interval(imp, imp * 1.2, dense)
  assert stats.comparison(worse) == stats.IMP_WORSE
  one_seed = stats.paired_difference_interval(imp[:1] * 1.2, imp[:1], dense[:1])
  assert one_seed.low > 0 and stats.comparison(one_seed) == stats.INCONCLUSIVE


def test_paired_difference_of_equal_branches_is_inconclusive():
  rng = np.random.default_rng(13)
  v = _pair_effects(rng, 64)
  dense = _losses(rng, 3, 64, pair_effects=v)
  a, b = _losses(rng, 3, 64, pair_effects=v), _losses(rng, 3, 64, pair_effects=v)
  interval = stats.paired_difference_interval(a, b, dense)
  assert interval.low < 0 < interval.high
  assert stats.comparison(interval) == stats.INCONCLUSIVE


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


@pytest.mark.parametrize('losses, dense', [
    (np.ones((3, 4)), np.ones((3, 5))),
    (np.ones(4), np.ones(4)),
    (np.ones((2, 3, 4)), np.ones((2, 3, 4))),
    (np.ones((0, 4)), np.ones((0, 4))),
    (np.ones((3, 4)), np.full((3, 4), np.nan)),
    (np.full((3, 4), np.inf), np.ones((3, 4))),
    (np.ones((3, 4)), np.zeros((3, 4))),
])
def test_bad_inputs_raise(losses, dense):
  with pytest.raises(UserError):
    stats.relative_difference_interval(losses, dense)


def test_bad_paired_inputs_and_settings_raise():
  with pytest.raises(UserError):
    stats.paired_difference_interval(np.ones((3, 4)), np.ones((3, 5)), np.ones((3, 4)))
  with pytest.raises(UserError):
    stats.relative_difference_interval(np.ones((3, 4)), np.ones((3, 4)), confidence=95)
  with pytest.raises(UserError):
    stats.relative_difference_interval(np.ones((3, 4)), np.ones((3, 4)), n_boot=1)
