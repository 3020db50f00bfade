"""Shared loss terms against numpy formulations."""

import numpy as np

from jaxtickets.models import losses


def _np_norm(x):
  mean = x.mean(axis=(1, 2), keepdims=True)
  std = np.sqrt(x.var(axis=(1, 2), keepdims=True, ddof=1) + 1e-5)
  return (x - mean) / std


def _taps(rng, taps=losses.ALL_TAPS):
  return {t: rng.normal(size=(2, 32 >> i, 32 >> i, 3 + i)).astype(np.float32) for i, t in enumerate(taps)}


def test_mse_is_the_mean_over_all_elements():
  a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
  np.testing.assert_allclose(losses.mse(a, np.zeros_like(a)), (1 + 4 + 9 + 16) / 4, rtol=1e-6)


def test_mean_std_style_loss_matches_numpy():
  rng = np.random.default_rng(0)
  g, s = _taps(rng), _taps(rng)
  want = 0.0
  for t in losses.ALL_TAPS:
    for x, y in [(g[t], s[t])]:
      mx, my = x.mean(axis=(1, 2)), y.mean(axis=(1, 2))
      sx = np.sqrt(x.var(axis=(1, 2), ddof=1) + 1e-5)
      sy = np.sqrt(y.var(axis=(1, 2), ddof=1) + 1e-5)
      want += np.mean((mx - my) ** 2) + np.mean((sx - sy) ** 2)
  np.testing.assert_allclose(losses.mean_std_style_loss(g, s), want, rtol=1e-5)
  # Only the listed taps count.
  only = losses.mean_std_style_loss(g, s, taps=("r11",))
  assert float(only) < float(losses.mean_std_style_loss(g, s))


def test_normalized_content_loss_ignores_scale_and_shift():
  rng = np.random.default_rng(1)
  c = _taps(rng)
  g = {t: 3.0 * v + 2.0 for t, v in c.items()}  # per-channel affine changes vanish after norm (up to eps)
  assert float(losses.normalized_content_loss(g, c)) < 1e-4
  other = _taps(rng)
  want = sum(np.mean((_np_norm(other[t]) - _np_norm(c[t])) ** 2) for t in ("r41", "r51"))
  np.testing.assert_allclose(losses.normalized_content_loss(other, c), want, rtol=1e-5)


def test_feature_loss_sums_raw_mse_over_taps():
  rng = np.random.default_rng(2)
  a, b = _taps(rng), _taps(rng)
  want = sum(np.mean((a[t] - b[t]) ** 2) for t in losses.ALL_TAPS)
  np.testing.assert_allclose(losses.feature_loss(a, b), want, rtol=1e-5)
