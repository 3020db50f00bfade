"""The statistics behind the matching verdict: intervals for relative loss differences, verdicts, highest match.

Losses come as (R, P) arrays: R replicates (seeds) evaluated on the same P held-out (content, style) pairs, cell
(i, j) of a ticket paired with cell (i, j) of the dense network. Both levels are random (seeds and pairs), so the
standard error comes from the crossed ("pigeonhole", Owen 2007) bootstrap, which resamples replicates and pairs
independently; the interval uses a t quantile with the replicates' R - 1 degrees of freedom, which is
conservative when R is small. numpy and scipy only, so the report can run without jax.
"""

from collections.abc import Callable, Sequence
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
  """A point estimate with its confidence interval and the design it came from."""
  estimate: float
  low: float
  high: float
  se: float
  replicates: int  # R
  pairs: int  # P
  df: int  # degrees of freedom of the t quantile
  replicates_ok: bool  # False when R == 1: seed-to-seed noise is unmeasured, so no firm verdict


def _check_losses(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
  """float64 copies of the named (R, P) arrays; UserError unless all are 2-D, non-empty, finite, same shape."""
  out = [np.asarray(a, dtype=np.float64) for a in arrays.values()]
  for name, a in zip(arrays, out):
    if a.ndim != 2 or a.size == 0:
      raise UserError(f'The {name} have shape {a.shape}; give a non-empty (replicates, pairs) array.')
    if not np.isfinite(a).all():
      raise UserError(f'The {name} contain NaN or infinite values; drop the diverged runs before comparing.')
  shapes = {name: a.shape for name, a in zip(arrays, out)}
  if len(set(shapes.values())) > 1:
    raise UserError(f'The loss arrays differ in shape ({shapes}); evaluate every network on the same replicates '
                    'and pairs.')
  return out


def _check_positive(dense: np.ndarray) -> None:
  # The dense mean is the denominator of every statistic here, also in each resample.
  if (dense <= 0).any():
    raise UserError('The dense losses contain zero or negative values; the relative difference needs positive '
                    'dense losses.')


def _crossed_bootstrap(arrays: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], *, confidence: float,
                       n_boot: int, seed: int) -> Interval:
  """Interval for statistic(*means of arrays), its SE from the crossed bootstrap over replicates and pairs.

  Every resample draws R replicate and P pair indices with replacement, the same ones for all arrays (pairing
  kept). A resample's mean is then sum_ij a_i x_ij b_j / (R P) with a, b the draw counts, so all resamples are
  two matrix products instead of a Python loop.
  """
  if not 0.0 < confidence < 1.0:
    raise UserError(f'The confidence is {confidence}; give a fraction between 0 and 1, e.g. 0.95.')
  if n_boot < 2:
    raise UserError(f'n_boot is {n_boot}; give at least 2 bootstrap resamples (2000 is usual).')
  r, p = arrays[0].shape
  estimate = float(statistic(*(a.mean() for a in arrays)))
  if r == 1 and p == 1:
    return Interval(estimate, -math.inf, math.inf, math.inf, r, p, 0, False)
  rng = np.random.default_rng(seed)
  # With one replicate there is nothing to resample at that level; the interval then covers pair noise only.
  rows = rng.multinomial(r, np.full(r, 1.0 / r), size=n_boot) if r > 1 else np.ones((n_boot, 1))
  cols = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot)
  means = [np.einsum('bi,ij,bj->b', rows, a, cols, optimize=True) / (r * p) for a in arrays]
  se = float(np.std(statistic(*means), ddof=1))
  df = r - 1 if r > 1 else p - 1
  # Student's t quantile from scipy.special (what scipy.stats.t.ppf calls): scipy.stats takes a second longer to
  # import, in every run and command line that writes a table. Imported here for the same reason.
  from scipy import special  # pylint: disable=g-import-not-at-top

  half = float(special.stdtrit(df, (1.0 + confidence) / 2.0)) * se
  return Interval(estimate, estimate - half, estimate + half, se, r, p, df, r > 1)


def relative_difference_interval(losses, dense, *, confidence: float = 0.95, n_boot: int = 2000,
                                 seed: int = 0) -> Interval:
  """Interval for mean(losses) / mean(dense) - 1; both (R, P), cell (i, j) of one paired with (i, j) of the other."""
  losses, dense = _check_losses({'losses': losses, 'dense losses': dense})
  _check_positive(dense)
  return _crossed_bootstrap([losses, dense], lambda ticket, d: ticket / d - 1.0, confidence=confidence,
                            n_boot=n_boot, seed=seed)


def paired_difference_interval(losses_a, losses_b, dense, *, confidence: float = 0.95, n_boot: int = 2000,
                               seed: int = 0) -> Interval:
  """Interval for (mean(A) - mean(B)) / mean(dense): A a baseline, B IMP; positive means IMP's loss is lower."""
  losses_a, losses_b, dense = _check_losses({'baseline losses': losses_a, 'IMP losses': losses_b,
                                             'dense losses': dense})
  _check_positive(dense)
  return _crossed_bootstrap([losses_a, losses_b, dense], lambda a, b, d: (a - b) / d, confidence=confidence,
                            n_boot=n_boot, seed=seed)


def verdict(interval: Interval, tolerance: float) -> str:
  """MATCHES when the whole interval lies below tolerance, DOES_NOT_MATCH when above, else INCONCLUSIVE."""
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


def highest_matching(rounds: Sequence[dict]) -> tuple[dict | None, dict | None]:
  """(conservative, sparsest) matching rows of one branch's pruned rounds; either None when nothing matches.

  conservative: the sparsest row among the rounds that match with every pruned round before them matching too.
  sparsest: the sparsest matching row anywhere, which may follow a round that failed to match.
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
