"""The statistics behind the matching verdict: intervals for loss ratios, verdicts, the highest match, a planner.

Losses come as (R, P) arrays: R replicates (seeds) evaluated on the same P held-out pairs, cell (i, j) of a ticket
paired with cell (i, j) of its own replicate's dense network. Every statistic lives on the log-ratio scale:

  d_ij = log(ticket_ij / dense_ij), averaged first over the crops of one (content, style) image combination
  (pairs of the same name), so crops of the same images are not counted as independent evidence: D (R, J).

The estimand is the geometric-mean loss ratio on THIS held-out set of image combinations, minus 1: the images are
fixed by the run's held-out set, the seeds are random. Its estimate is exp(mean D) - 1 and its interval
exp(low) - 1, exp(high) - 1, so it cannot reach below -100% and one degenerate run shifts it by its log, not by its
raw size.

The interval is a replicate-level t interval: per replicate i, m_i = mean over the J combinations of D_ij, and
mean(m) +- t_{(1+confidence)/2, R-1} sd(m) / sqrt(R). The combinations are not independent draws: they form a
content x style grid, so every combination that shares a content (or a style) shares that image's effect, and a
model that treats the J combinations as independent (a two-way seeds x combinations random-effects model) is
miscalibrated both for this set and for images in general. Averaging over the fixed set first removes the question:
whatever the content and style effects and their interactions with each other or with the seed, each m_i is the
estimand plus the replicate's own seed terms averaged over the set, and the m_i are i.i.d. across seeds. The t
interval with R - 1 degrees of freedom is then exact when the m_i are normal (docs/protocol.md derives it and
gives its measured coverage, also when seeds are bimodal). It says nothing about other images: that would need a
crossed model of seed, content and style, whose few contents leave it a handful of degrees of freedom.

With one replicate the seed-to-seed spread is unmeasured: the interval is unbounded and the verdict inconclusive.

numpy and scipy only, so the report can run without jax.
"""

from collections.abc import Sequence
import dataclasses
import math

import numpy as np

from jaxtickets.errors import UserError

MATCHES = 'matches'
DOES_NOT_MATCH = 'does not match'
INCONCLUSIVE = 'inconclusive'
IMP_BETTER = 'imp better'
IMP_WORSE = 'imp worse'


@dataclasses.dataclass(frozen=True)
class Interval:
  """A geometric mean ratio minus 1 with its confidence interval (both on that scale) and the design behind it."""
  estimate: float  # exp(log_mean) - 1
  low: float
  high: float
  log_mean: float  # mean of the log ratios over replicates and image combinations
  se: float  # standard error of log_mean: sd of the replicates' means / sqrt(R); inf when R == 1
  quantile: float  # the half-width on the log scale over se: the t quantile with R - 1 df
  replicates: int  # R
  pairs: int  # P, the evaluation pairs (crops)
  units: int  # J, the image combinations the pairs' crops were averaged into
  replicates_ok: bool  # False when R == 1: seed-to-seed noise is unmeasured, so no firm verdict


def _check_losses(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
  """float64 copies of the named (R, P) arrays; UserError unless all are 2-D, non-empty, finite, positive, same shape."""
  out = [np.asarray(a, dtype=np.float64) for a in arrays.values()]
  for name, a in zip(arrays, out):
    if a.ndim != 2 or a.size == 0:
      raise UserError(f'The {name} have shape {a.shape}; give a non-empty (replicates, pairs) array.')
    if not np.isfinite(a).all():
      raise UserError(f'The {name} contain NaN or infinite values; drop the diverged runs before comparing.')
    if (a <= 0).any():
      raise UserError(f'The {name} contain zero or negative values; a loss ratio needs positive losses.')
  shapes = {name: a.shape for name, a in zip(arrays, out)}
  if len(set(shapes.values())) > 1:
    raise UserError(f'The loss arrays differ in shape ({shapes}); evaluate every network on the same replicates '
                    'and pairs.')
  return out


def unit_means(values, pair_names: Sequence[str] | None = None) -> np.ndarray:
  """(R, J) means of the (R, P) `values` over the pairs of each name, names in order of first appearance.

  Without names every pair is its own unit.
  """
  values = np.asarray(values, dtype=np.float64)
  if pair_names is None:
    return values
  names = list(pair_names)
  if len(names) != values.shape[1]:
    raise UserError(f'{len(names)} pair names for {values.shape[1]} pairs; record one name per evaluation pair.')
  index = {name: k for k, name in enumerate(dict.fromkeys(names))}
  columns = np.array([index[name] for name in names])
  counts = np.bincount(columns, minlength=len(index))
  sums = np.zeros((values.shape[0], len(index)))
  np.add.at(sums, (slice(None), columns), values)
  return sums / counts


def log_ratios(numerator, denominator, pair_names: Sequence[str] | None = None, *,
               names: tuple[str, str] = ('losses', 'dense losses')) -> np.ndarray:
  """(R, J): log(numerator / denominator) per cell, averaged over the crops of each image combination."""
  numerator, denominator = _check_losses(dict(zip(names, (numerator, denominator))))
  return unit_means(np.log(numerator) - np.log(denominator), pair_names)


def replicate_interval(d, *, confidence: float = 0.95, pairs: int | None = None) -> Interval:
  """The t interval over replicates for the mean of the (R, J) log ratios `d` (module docstring): each replicate's
  mean over the image combinations is one observation."""
  if not 0.0 < confidence < 1.0:
    raise UserError(f'The confidence is {confidence}; give a fraction between 0 and 1, e.g. 0.95.')
  d = np.asarray(d, dtype=np.float64)
  r, j = d.shape
  m = d.mean(axis=1)
  mean = float(m.mean())
  if r < 2:  # seed-to-seed noise unmeasured: no finite interval can be claimed
    se, quantile, low, high = math.inf, math.inf, -math.inf, math.inf
  else:
    # scipy.stats takes about a second to import: only here, not when the module loads.
    from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top

    se = float(np.std(m, ddof=1)) / math.sqrt(r)
    quantile = float(scipy_stats.t.ppf((1.0 + confidence) / 2.0, r - 1))
    low, high = mean - quantile * se, mean + quantile * se
  return Interval(estimate=math.expm1(mean), low=math.expm1(low), high=math.expm1(high), log_mean=mean, se=se,
                  quantile=quantile, replicates=r, pairs=j if pairs is None else pairs, units=j, replicates_ok=r > 1)


def relative_difference_interval(losses, dense, *, pair_names: Sequence[str] | None = None,
                                 confidence: float = 0.95) -> Interval:
  """Geometric mean ratio of held-out loss (ticket / dense) - 1 over replicates and image combinations, with its
  interval; both (R, P), cell (i, j) of one paired with (i, j) of the other (the same replicate and pair)."""
  d = log_ratios(losses, dense, pair_names)
  return replicate_interval(d, confidence=confidence, pairs=np.shape(losses)[1])


def paired_difference_interval(losses_a, losses_b, *, pair_names: Sequence[str] | None = None,
                               confidence: float = 0.95) -> Interval:
  """Geometric mean ratio of held-out loss (A / B) - 1, A a baseline and B IMP paired by replicate and pair:
  positive means the baseline's loss is higher, so IMP is better. A ratio of the two needs no dense reference.
  """
  d = log_ratios(losses_a, losses_b, pair_names, names=('baseline losses', 'IMP losses'))
  return replicate_interval(d, confidence=confidence, pairs=np.shape(losses_a)[1])


def replicate_log_means(numerator, denominator, pair_names: Sequence[str] | None = None) -> np.ndarray:
  """(R,): each replicate's mean log ratio over image combinations, what the replicate planner's spread is of."""
  return log_ratios(numerator, denominator, pair_names).mean(axis=1)


def verdict(interval: Interval, tolerance: float) -> str:
  """MATCHES when the whole interval lies below +tolerance, DOES_NOT_MATCH when above, else INCONCLUSIVE."""
  if interval.replicates_ok and interval.high < tolerance:
    return MATCHES
  if interval.replicates_ok and interval.low > tolerance:
    return DOES_NOT_MATCH
  return INCONCLUSIVE


def comparison(interval: Interval) -> str:
  """For a paired_difference_interval: IMP_BETTER when it lies above 0, IMP_WORSE when below, else INCONCLUSIVE."""
  if interval.replicates_ok and interval.low > 0:
    return IMP_BETTER
  if interval.replicates_ok and interval.high < 0:
    return IMP_WORSE
  return INCONCLUSIVE


def replicates_needed(sd: float, tolerance: float, power: float = 0.8, confidence: float = 0.95) -> int:
  """The replicates R a study needs for a ticket as good as its dense network (true log ratio 0) to get MATCHES
  with probability `power`, when each replicate's mean log ratio scatters with standard deviation `sd`.

  The smallest R >= 2 with R >= ((t_{(1+confidence)/2, R-1} + t_{power, R-1}) sd / log(1 + tolerance))^2, the
  usual approximation to the noncentral t for the replicate-level interval that relative_difference_interval
  computes. `sd` is the SD of the replicates' means, which holds every variance term the held-out set cannot average
  away (seed, seed x content, seed x style, noise); the images' own effects are part of the estimand.
  """
  if not (0.5 <= power < 1.0 and 0.0 < confidence < 1.0):
    raise UserError(f'power {power} and confidence {confidence}: give fractions, power at least 0.5.')
  if not tolerance > 0:
    raise UserError(f'The tolerance is {tolerance}; give a positive fraction, e.g. 0.02.')
  if not (math.isfinite(sd) and sd >= 0):
    raise UserError(f'The spread is {sd}; give a finite standard deviation.')
  from scipy import stats as scipy_stats  # pylint: disable=g-import-not-at-top

  k = sd / math.log1p(tolerance)
  normal = (scipy_stats.norm.ppf((1.0 + confidence) / 2.0) + scipy_stats.norm.ppf(power)) * k
  # t quantiles exceed the normal ones (power >= 0.5), so the answer lies at or above the normal one; the right
  # side shrinks as R grows, so the first R that satisfies it is the answer.
  r = max(2, math.ceil(normal ** 2))
  while r < ((scipy_stats.t.ppf((1.0 + confidence) / 2.0, r - 1) + scipy_stats.t.ppf(power, r - 1)) * k) ** 2:
    r += 1
  return r


def highest_matching(rounds: Sequence[dict]) -> tuple[dict | None, dict | None]:
  """(headline, exploratory sparsest) matching rows of one branch's pruned rounds; either None when none matches.

  headline: the sparsest row among the rounds that match with every pruned round before them matching too, a
  fixed-sequence test, so the confidence holds for the claim as a whole.
  sparsest: the sparsest matching row anywhere, which may follow a round that failed to match; the best of many
  tests, so exploratory.
  """
  pruned = sorted((row for row in rounds if row['round'] > 0), key=lambda row: row['round'])
  sparsity = lambda row: (row['sparsity_prunable'], row['round'])  # ties go to the later round
  prefix = []
  for row in pruned:
    if row['verdict'] != MATCHES:
      break
    prefix.append(row)
  matching = [row for row in pruned if row['verdict'] == MATCHES]
  conservative = max(prefix, key=sparsity) if prefix else None
  sparsest = max(matching, key=sparsity) if matching else None
  return conservative, sparsest
