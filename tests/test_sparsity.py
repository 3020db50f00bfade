"""Tests for jaxtickets.core.sparsity on small hand-made param dicts."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtickets.core import sparsity as sp
from jaxtickets.errors import UserError


def _toy_params(seed=0):
  """Two groups, kernels of different sizes and ranks, biases, and a 1-d leaf named 'kernel'."""
  rng = np.random.default_rng(seed)
  n = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  return {
      'encoder': {'conv1': {'kernel': n(3, 3, 2, 4), 'bias': n(4)},
                  'conv2': {'kernel': n(3, 3, 4, 4), 'bias': n(4)}},
      'decoder': {'conv1': {'kernel': n(3, 3, 4, 8), 'bias': n(8)},
                  'dense': {'kernel': n(8, 2), 'bias': n(2)},
                  'norm': {'kernel': n(4)}},
  }


KERNELS = ['decoder/conv1/kernel', 'decoder/dense/kernel', 'encoder/conv1/kernel', 'encoder/conv2/kernel']


def _flags_by_path(params, prunable):
  return dict(zip(sp.leaf_paths(params), jax.tree.leaves(prunable)))


def _flat_prunable(params, masks, prunable):
  """(|w|, alive) of all prunable weights concatenated in leaf order, independently of the module."""
  ws, ms = [], []
  for p, m, f in zip(jax.tree.leaves(params), jax.tree.leaves(masks), jax.tree.leaves(prunable)):
    if f:
      ws.append(np.abs(np.asarray(p)).ravel())
      ms.append(np.asarray(m).ravel())
  return np.concatenate(ws), np.concatenate(ms)


def _pruned_positions(before, after, prunable):
  _, a = _flat_prunable(jax.tree.map(np.zeros_like, before), before, prunable)
  _, b = _flat_prunable(jax.tree.map(np.zeros_like, after), after, prunable)
  assert not np.any(b & ~a), 'a pruned weight was revived'
  return np.flatnonzero(a & ~b)


def test_paths_in_leaf_order():
  params = _toy_params()
  assert sp.leaf_paths(params)[:3] == ['decoder/conv1/bias', 'decoder/conv1/kernel', 'decoder/dense/bias']
  assert len(sp.leaf_paths(params)) == len(jax.tree.leaves(params))


def test_masks_have_params_structure_and_biases_are_never_prunable():
  params = _toy_params()
  masks = sp.ones_masks(params)
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  assert jax.tree.structure(masks) == jax.tree.structure(params)
  assert jax.tree.structure(prunable) == jax.tree.structure(params)
  assert all(m.dtype == np.bool_ and m.all() for m in jax.tree.leaves(masks))
  flags = _flags_by_path(params, prunable)
  assert sorted(p for p, f in flags.items() if f) == KERNELS  # no biases, no 1-d 'kernel'


@pytest.mark.parametrize('scope, expected', [
    (['encoder'], ['encoder/conv1/kernel', 'encoder/conv2/kernel']),
    (['decoder/*'], ['decoder/conv1/kernel', 'decoder/dense/kernel']),
    (['encoder/conv2*', 'decoder/dense'], ['decoder/dense/kernel', 'encoder/conv2/kernel']),
    ('decoder', ['decoder/conv1/kernel', 'decoder/dense/kernel']),
])
def test_scope_patterns(scope, expected):
  params = _toy_params()
  flags = _flags_by_path(params, sp.prunable_leaves(params, scope))
  assert sorted(p for p, f in flags.items() if f) == expected


def test_unknown_scope_raises_user_error():
  params = _toy_params()
  with pytest.raises(UserError, match=r"'decoder/nothing\*'.*encoder"):
    sp.prunable_leaves(params, ['decoder', 'decoder/nothing*'], allow_missing_groups=True)
  with pytest.raises(UserError, match=r"'transform'.*decoder, encoder"):
    sp.prunable_leaves(params, ['decoder', 'transform'])
  with pytest.raises(UserError, match='bias'):  # matches leaves, but no kernel
    sp.prunable_leaves(params, ['decoder/*/bias'])
  flags = sp.prunable_leaves(params, ['decoder', 'transform'], allow_missing_groups=True)
  assert sum(jax.tree.leaves(flags)) == 2
  with pytest.raises(UserError, match='encoderr'):  # a typo is no missing group
    sp.prunable_leaves(params, ['encoderr'], allow_missing_groups=True)


def test_global_prune_removes_the_smallest_alive_weights():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  w, _ = _flat_prunable(params, masks, prunable)
  n = round(0.2 * w.size)
  new = sp.global_magnitude_prune(params, masks, prunable, 0.2)
  assert set(_pruned_positions(masks, new, prunable)) == set(np.argsort(w, kind='stable')[:n])
  assert all(m.all() for m in jax.tree.leaves(masks))  # input untouched
  for p, m, f in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(prunable)):
    assert isinstance(m, np.ndarray) and m.shape == np.shape(p) and (f or m.all())

  # Second round: round(0.2 * survivors), the smallest among the survivors only.
  newer = sp.global_magnitude_prune(params, new, prunable, 0.2)
  removed = _pruned_positions(new, newer, prunable)
  _, alive = _flat_prunable(params, new, prunable)
  survivors = np.flatnonzero(alive)
  assert len(removed) == round(0.2 * survivors.size)
  assert set(removed) == set(survivors[np.argsort(w[survivors], kind='stable')[:len(removed)]])


def test_three_rounds_give_exact_geometric_sparsity():
  rng = np.random.default_rng(1)
  params = {'decoder': {'a': {'kernel': rng.standard_normal((10, 50)), 'bias': np.ones(50)},
                        'b': {'kernel': rng.standard_normal((25, 20)), 'bias': np.ones(20)}}}
  prunable = sp.prunable_leaves(params, ['decoder'])
  masks = sp.ones_masks(params)
  for expected in (0.2, 0.36, 0.488):
    masks = sp.global_magnitude_prune(params, masks, prunable, 0.2)
    report = sp.count(masks, prunable)
    assert report['prunable']['sparsity'] == pytest.approx(expected, abs=1e-12)
    assert report['prunable']['size'] - report['prunable']['remaining'] == round(expected * 1000)


def test_ties_are_broken_by_flat_index():
  params = {'encoder': {'c': {'kernel': np.full((4, 5), -2.0)}, 'd': {'kernel': np.full((2, 5), 2.0)}}}
  params['encoder']['c']['kernel'][0, 0] = 0.5  # the one strictly smallest, then 29 ties
  prunable = sp.prunable_leaves(params, ['encoder'])
  masks = sp.ones_masks(params)
  new = sp.global_magnitude_prune(params, masks, prunable, 0.2)  # 6 weights
  np.testing.assert_array_equal(_pruned_positions(masks, new, prunable), np.arange(6))
  again = sp.global_magnitude_prune(params, masks, prunable, 0.2)
  jax.tree.map(np.testing.assert_array_equal, new, again)


def test_pruned_weights_stay_pruned_even_if_params_are_nonzero():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  masks['encoder']['conv1']['kernel'][0] = False  # 24 weights pruned earlier
  params['encoder']['conv1']['kernel'][0] = 1e-9  # tiny but alive-looking values there
  new = sp.global_magnitude_prune(params, masks, prunable, 0.2)
  assert not new['encoder']['conv1']['kernel'][0].any()
  _, alive = _flat_prunable(params, masks, prunable)
  assert len(_pruned_positions(masks, new, prunable)) == round(0.2 * alive.sum())
  layer = sp.layerwise_magnitude_prune(params, masks, prunable, 0.2)
  assert not layer['encoder']['conv1']['kernel'][0].any()


def test_layerwise_prunes_each_layer_by_its_own_count():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.layerwise_magnitude_prune(params, sp.ones_masks(params), prunable, 0.3)
  for _ in range(2):
    new = sp.layerwise_magnitude_prune(params, masks, prunable, 0.2)
    for path, kp_p, m, n, f in zip(sp.leaf_paths(params), jax.tree.leaves(params), jax.tree.leaves(masks),
                                   jax.tree.leaves(new), jax.tree.leaves(prunable)):
      if not f:
        assert n.all(), path
        continue
      w, m, n = np.abs(kp_p).ravel(), m.ravel(), n.ravel()
      removed = np.flatnonzero(m & ~n)
      assert not np.any(n & ~m)
      assert len(removed) == round(0.2 * m.sum()), path
      alive = np.flatnonzero(m)
      assert set(removed) == set(alive[np.argsort(w[alive], kind='stable')[:len(removed)]]), path
    masks = new


def test_lamp_prunes_a_hand_computed_case():
  # A: |w| 1, 2, 3 alive (the 100 is pruned already, so it takes no part): squares 1, 4, 9, suffix sums 14, 13, 9,
  #    scores 1/14 = 0.071, 4/13 = 0.308, 1.
  # B: |w| 5, 10, 20, 40 (in the order 5, -40, 10, 20): squares 25, 100, 400, 1600, suffix sums 2125, 2100, 2000,
  #    1600, scores 0.0118, 0.0476, 0.2, 1.
  # 4 of the 7 alive go: B5, B10, A1, B20. Global magnitude would empty A instead (1, 2, 3 and 5).
  params = {'decoder': {'a': {'kernel': np.array([[1.0, -2.0, 3.0, 100.0]], np.float32)},
                        'b': {'kernel': np.array([[5.0, -40.0], [10.0, 20.0]], np.float32)}}}
  prunable = sp.prunable_leaves(params, ['decoder'])
  masks = sp.ones_masks(params)
  masks['decoder']['a']['kernel'][0, 3] = False
  new = sp.lamp_prune(params, masks, prunable, 4 / 7)
  np.testing.assert_array_equal(new['decoder']['a']['kernel'], [[False, True, True, False]])
  np.testing.assert_array_equal(new['decoder']['b']['kernel'], [[False, True], [False, False]])
  np.testing.assert_allclose(sp.lamp_scores(np.array([5.0, 40.0, 10.0, 20.0])),
                             [25 / 2125, 1.0, 100 / 2100, 400 / 2000])
  global_ = sp.global_magnitude_prune(params, masks, prunable, 4 / 7)
  assert not global_['decoder']['a']['kernel'].any()
  # Ties in magnitude go by position: the later of two equal largest weights scores 1.
  np.testing.assert_allclose(sp.lamp_scores(np.array([2.0, 1.0, 2.0])), [4 / 8, 1 / 9, 1.0])


def _lamp_reference(params, masks, prunable, n):
  """The n alive prunable weights with the smallest LAMP scores, scored weight by weight from the definition."""
  scores = []
  for p, m, f in zip(jax.tree.leaves(params), jax.tree.leaves(masks), jax.tree.leaves(prunable)):
    if not f:
      continue
    w, alive = np.abs(np.asarray(p, np.float64)).ravel(), np.asarray(m).ravel()
    for u in range(w.size):
      larger = alive & (w >= w[u])  # no ties in these random weights
      scores.append(w[u] ** 2 / np.sum(w[larger] ** 2) if alive[u] else np.inf)
  return set(np.argsort(np.array(scores), kind='stable')[:n])


def test_lamp_prunes_exactly_the_requested_count_and_keeps_every_layers_largest_weight():
  params = _toy_params(3)
  # Layers of very different scales: global magnitude would empty the small ones first.
  for scale, leaf in zip((1e-3, 1.0, 30.0, 0.1), (params['decoder']['conv1'], params['decoder']['dense'],
                                                  params['encoder']['conv1'], params['encoder']['conv2'])):
    leaf['kernel'] = leaf['kernel'] * scale
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  for _ in range(8):
    new = sp.lamp_prune(params, masks, prunable, 0.3)
    _, alive = _flat_prunable(params, masks, prunable)
    removed = _pruned_positions(masks, new, prunable)
    assert len(removed) == round(0.3 * alive.sum())
    assert set(removed) == _lamp_reference(params, masks, prunable, len(removed))
    for p, m, f in zip(jax.tree.leaves(params), jax.tree.leaves(new), jax.tree.leaves(prunable)):
      if f:
        assert m.ravel()[np.argmax(np.abs(p).ravel())], 'a layer lost its largest weight'
    masks = new
  # Eight rounds of 30% leave about 6% of the weights, yet no layer is empty.
  report = sp.count(masks, prunable)
  assert report['prunable']['sparsity'] > 0.9 and all(e['remaining'] > 0 for e in report['layers'].values())
  # One shot to a sparsity: the exact count, the same choice as pruning that many at once.
  total = report['prunable']['size']
  one = sp.prune_to_sparsity(params, prunable, 0.75, method='lamp')
  assert total - sp.count(one, prunable)['prunable']['remaining'] == round(0.75 * total)
  jax.tree.map(np.testing.assert_array_equal, one, sp.lamp_prune(params, sp.ones_masks(params), prunable, 0.75))


def test_prune_to_sparsity_hits_the_exact_count_with_the_globally_smallest():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  w, _ = _flat_prunable(params, masks, prunable)
  for s in (0.0, 0.333, 0.7, 1.0):
    new = sp.prune_to_sparsity(params, prunable, s)
    removed = _pruned_positions(masks, new, prunable)
    assert len(removed) == round(s * w.size)
    assert set(removed) == set(np.argsort(w, kind='stable')[:len(removed)])
  # From existing masks: only the difference is pruned, and the old zeros stay.
  start = sp.global_magnitude_prune(params, masks, prunable, 0.2)
  new = sp.prune_to_sparsity(params, prunable, 0.5, masks=start)
  assert sp.count(new, prunable)['prunable']['remaining'] == w.size - round(0.5 * w.size)
  _pruned_positions(start, new, prunable)  # asserts no revival
  # With unchanged magnitudes the global order is fixed, so one shot equals two iterative rounds.
  two = sp.global_magnitude_prune(params, start, prunable, 0.2)
  pruned = w.size - sp.count(two, prunable)['prunable']['remaining']
  jax.tree.map(np.testing.assert_array_equal, two, sp.prune_to_sparsity(params, prunable, pruned / w.size))
  with pytest.raises(UserError, match='sparsity'):
    sp.prune_to_sparsity(params, prunable, 0.1, masks=start)
  with pytest.raises(UserError, match='1.5'):
    sp.prune_to_sparsity(params, prunable, 1.5)


def test_random_prune_like_keeps_counts_and_randomizes_positions():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  reference = sp.global_magnitude_prune(params, sp.ones_masks(params), prunable, 0.5)
  reference['decoder']['conv1']['bias'][0] = False  # not prunable: the random masks keep it
  rand = sp.random_prune_like(reference, prunable, seed=3)
  assert jax.tree.structure(rand) == jax.tree.structure(params)
  for path, r, m, f in zip(sp.leaf_paths(params), jax.tree.leaves(reference), jax.tree.leaves(rand),
                           jax.tree.leaves(prunable)):
    if f:
      assert m.sum() == r.sum(), path
    else:
      assert m.all(), path
  differs = [not np.array_equal(r, m) for r, m in zip(jax.tree.leaves(reference), jax.tree.leaves(rand))]
  assert sum(differs) >= len(KERNELS)
  jax.tree.map(np.testing.assert_array_equal, rand, sp.random_prune_like(reference, prunable, seed=3))
  other = sp.random_prune_like(reference, prunable, seed=4)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rand), jax.tree.leaves(other)))


def test_count_matches_a_hand_computation():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  masks['encoder']['conv1']['kernel'][:2] = False  # 2 * 3*2*4 = 48 of 72
  masks['decoder']['dense']['kernel'][0, 0] = False  # 1 of 16
  masks['decoder']['conv1']['bias'][:] = False  # not prunable: counts as remaining
  report = sp.count(masks, prunable, params)
  assert list(report['layers']) == KERNELS
  assert report['layers']['encoder/conv1/kernel'] == {'size': 72, 'remaining': 24, 'sparsity': 48 / 72}
  assert report['layers']['decoder/dense/kernel'] == {'size': 16, 'remaining': 15, 'sparsity': 1 / 16}
  assert report['layers']['encoder/conv2/kernel'] == {'size': 144, 'remaining': 144, 'sparsity': 0.0}
  assert report['prunable'] == {'size': 520, 'remaining': 471, 'sparsity': 49 / 520}
  total = 520 + 4 + 4 + 8 + 2 + 4
  assert report['total'] == {'size': total, 'remaining': total - 49, 'sparsity': 49 / total}
  assert isinstance(report['total']['sparsity'], float)
  table = sp.format_sparsity_table(report)
  assert 'encoder/conv1/kernel' in table and '0.6667' in table and f'{49 / 520:.4f}' in table
  assert f'{49 / total:.4f}' in table and 'bias' not in table
  with pytest.raises(UserError, match='shape'):
    sp.count(masks, prunable, _toy_params() | {'encoder': jax.tree.map(lambda p: p[:1], params['encoder'])})


def test_apply_masks_under_jit():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.global_magnitude_prune(params, sp.ones_masks(params), prunable, 0.5)
  out = jax.jit(sp.apply_masks)(params, masks)
  for p, m, o in zip(jax.tree.leaves(params), jax.tree.leaves(masks), jax.tree.leaves(out)):
    assert o.dtype == p.dtype
    np.testing.assert_array_equal(np.asarray(o), np.where(m, p, 0))
  with pytest.raises(UserError, match='structure'):
    sp.apply_masks(params, {'encoder': masks['encoder']})


def test_apply_masks_zeros_pruned_entries_even_non_finite_ones_and_takes_0_1_masks():
  """Pruned entries become 0 whatever they held (a product with the mask would keep NaN and inf); masks of 0/1
  numbers, or of another shape that broadcasts, zero the same entries as bool masks."""
  p = {'w': np.array([[1.5, np.nan], [np.inf, -2.0]], np.float32)}
  bool_mask = {'w': np.array([[True, False], [False, True]])}
  expected = np.array([[1.5, 0.0], [0.0, -2.0]], np.float32)
  for masks in (bool_mask, {'w': bool_mask['w'].astype(np.float32)}, jax.tree.map(jnp.asarray, bool_mask)):
    for fn in (sp.apply_masks, jax.jit(sp.apply_masks)):
      np.testing.assert_array_equal(fn(p, masks)['w'], expected)
  row = {'w': np.array([True, False])}  # broadcasts over rows: the second column pruned
  np.testing.assert_array_equal(sp.apply_masks(p, row)['w'], np.array([[1.5, 0.0], [np.inf, 0.0]], np.float32))


def _train(opt, params, masks, target, steps, mask_updates):
  """Five masked-forward steps; with mask_updates also masks grads and the params after each update."""
  loss = lambda p: sum(jnp.sum((q - t) ** 2) for q, t in
                       zip(jax.tree.leaves(sp.apply_masks(p, masks)), jax.tree.leaves(target)))
  # One dense step first: stale Adam moments, as when the optimizer state outlives the pruning. (Jitted: run
  # eagerly, every op and leaf shape compiles a program of its own.)
  @jax.jit
  def dense_step(params):
    state = opt.init(params)
    _, state = opt.update(jax.grad(lambda p: sum(jnp.sum((q - t) ** 2) for q, t in zip(
        jax.tree.leaves(p), jax.tree.leaves(target))))(params), state, params)
    return sp.apply_masks(params, masks), state

  params, state = dense_step(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    if mask_updates:
      grads = sp.apply_masks(grads, masks)
    updates, state = opt.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (sp.apply_masks(params, masks) if mask_updates else params), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


@pytest.mark.parametrize('opt', [optax.adam(1e-2), optax.adamw(1e-2, weight_decay=0.1)], ids=['adam', 'adamw'])
def test_masked_training_keeps_pruned_weights_zero(opt):
  params = _toy_params()
  target = jax.tree.map(lambda p: p + 1.0, params)  # every weight wants to move
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.global_magnitude_prune(params, sp.ones_masks(params), prunable, 0.5)
  trained = _train(opt, params, masks, target, steps=5, mask_updates=True)
  for p, t, m in zip(jax.tree.leaves(params), jax.tree.leaves(trained), jax.tree.leaves(masks)):
    t = np.asarray(t)
    assert np.all(t[~m] == 0.0)
    assert np.all(t[m] != p[m])  # the survivors did train


def test_masking_only_the_forward_pass_lets_pruned_weights_revive():
  # The counter-test: without masking grads/params after the update, the stale Adam moments (and the
  # decay they feed) move pruned weights off zero, so the test above can fail.
  params = _toy_params()
  target = jax.tree.map(lambda p: p + 1.0, params)
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.global_magnitude_prune(params, sp.ones_masks(params), prunable, 0.5)
  trained = _train(optax.adamw(1e-2, weight_decay=0.1), params, masks, target, steps=5, mask_updates=False)
  revived = sum(int(np.count_nonzero(np.asarray(t)[~m]))
                for t, m in zip(jax.tree.leaves(trained), jax.tree.leaves(masks)))
  assert revived > 0


def test_global_prune_handles_twenty_million_weights():
  rng = np.random.default_rng(0)
  params = {'encoder': {f'conv{i}': {'kernel': rng.standard_normal((3, 3, 512, 512), dtype=np.float32),
                                     'bias': np.zeros(512, np.float32)} for i in range(9)}}
  prunable = sp.prunable_leaves(params, ['encoder'])
  masks = sp.global_magnitude_prune(params, sp.ones_masks(params), prunable, 0.2)
  report = sp.count(masks, prunable)
  assert report['prunable']['size'] - report['prunable']['remaining'] == round(0.2 * 9 * 3 * 3 * 512 * 512)


def test_nan_params_and_bad_fraction_raise_user_error():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  params['decoder']['dense']['kernel'][1, 1] = np.nan
  with pytest.raises(UserError, match='decoder/dense/kernel'):
    sp.global_magnitude_prune(params, sp.ones_masks(params), prunable, 0.2)
  with pytest.raises(UserError, match='-0.1'):
    sp.layerwise_magnitude_prune(params, sp.ones_masks(params), prunable, -0.1)


def _greedy_capped(params, masks, prunable, n, cap):
  """Independent capped global pruning: a plain loop over (|w|, flat index) that skips weights of full leaves."""
  entries, room = [], {}
  trees = zip(jax.tree.leaves(params), jax.tree.leaves(masks), jax.tree.leaves(prunable))
  for leaf, (p, m, f) in enumerate(trees):
    if not f:
      continue
    w, m = np.abs(np.asarray(p, dtype=np.float64)).ravel(), np.asarray(m).ravel()
    room[leaf] = max(0, int(np.floor(cap * m.size)) - int((~m).sum()))
    entries += [(float(w[pos]), len(entries), leaf, pos) for pos in range(m.size) if m[pos]]
  out = [np.array(m, dtype=bool) for m in jax.tree.leaves(masks)]
  for _, _, leaf, pos in sorted(entries):  # ties: the lower flat index first
    if n == 0:
      break
    if room[leaf] > 0:
      out[leaf].reshape(-1)[pos] = False
      room[leaf] -= 1
      n -= 1
  return jax.tree.unflatten(jax.tree.structure(masks), out)


def _pruned_counts(masks, prunable):
  return [int((~np.asarray(m)).sum()) for m, f in zip(jax.tree.leaves(masks), jax.tree.leaves(prunable)) if f]


def _prunable_sizes(params, prunable):
  return [int(np.size(p)) for p, f in zip(jax.tree.leaves(params), jax.tree.leaves(prunable)) if f]


def _assert_same_masks(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == np.bool_ and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def _tiny_encoder_params(seed=0, decimals=None):
  """Toy params whose encoder/conv1 kernel is 1000x smaller, so uncapped global pruning empties it first."""
  params = _toy_params(seed)
  params['encoder']['conv1']['kernel'] *= 1e-3
  if decimals is not None:  # coarse values: many exact ties across and within leaves
    params = jax.tree.map(lambda p: np.round(p, decimals), params)
  return params


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_layer_cap_one_is_the_uncapped_global_prune(seed):
  params = _toy_params(seed)
  params['decoder']['dense']['kernel'] = np.round(params['decoder']['dense']['kernel'], 1)  # some ties
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  w, _ = _flat_prunable(params, masks, prunable)
  for fraction in (0.2, 0.2, 0.5, 0.9):
    new = sp.global_magnitude_prune(params, masks, prunable, fraction, layer_cap=1.0)
    _assert_same_masks(new, sp.global_magnitude_prune(params, masks, prunable, fraction))
    # Against the plain stable sort of the survivors, independent of the module.
    _, alive = _flat_prunable(params, masks, prunable)
    survivors = np.flatnonzero(alive)
    n = round(fraction * survivors.size)
    smallest = survivors[np.argsort(w[survivors], kind='stable')[:n]]
    assert set(_pruned_positions(masks, new, prunable)) == set(smallest)
    masks = new
  for s in (0.3, 0.75):
    _assert_same_masks(sp.prune_to_sparsity(params, prunable, s, layer_cap=1.0),
                       sp.prune_to_sparsity(params, prunable, s))
  _assert_same_masks(sp.layerwise_magnitude_prune(params, masks, prunable, 0.3, layer_cap=1.0),
                     sp.layerwise_magnitude_prune(params, masks, prunable, 0.3))


@pytest.mark.parametrize('decimals', [None, 1])
def test_layer_cap_moves_the_excess_to_other_layers(decimals):
  params = _tiny_encoder_params(decimals=decimals)
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  sizes = _prunable_sizes(params, prunable)  # decoder/conv1, decoder/dense, encoder/conv1, encoder/conv2
  masks = sp.ones_masks(params)
  uncapped = sp.global_magnitude_prune(params, masks, prunable, 0.3)
  assert not uncapped['encoder']['conv1']['kernel'].any()  # without the cap, the tiny layer collapses
  n = round(0.3 * sum(sizes))
  capped = sp.global_magnitude_prune(params, masks, prunable, 0.3, layer_cap=0.5)
  counts = _pruned_counts(capped, prunable)
  assert sum(counts) == n
  assert all(c <= s // 2 for c, s in zip(counts, sizes))
  assert counts[2] == 72 // 2  # the tiny layer is full, the rest came from the others
  _assert_same_masks(capped, _greedy_capped(params, masks, prunable, n, 0.5))
  _pruned_positions(masks, capped, prunable)  # asserts no revival

  # Later rounds, and a leaf already beyond the cap (older masks) that must lose nothing more.
  masks = capped
  masks['decoder']['dense']['kernel'].reshape(-1)[:12] = False  # 12 of 16 > floor(0.5 * 16)
  for cap, fraction in ((0.5, 0.2), (0.5, 0.4), (0.3, 0.2), (0.8, 0.5)):
    _, alive = _flat_prunable(params, masks, prunable)
    n = round(fraction * alive.sum())
    new = sp.global_magnitude_prune(params, masks, prunable, fraction, layer_cap=cap)
    _assert_same_masks(new, _greedy_capped(params, masks, prunable, n, cap))
    before, after = _pruned_counts(masks, prunable), _pruned_counts(new, prunable)
    for b, a, s in zip(before, after, sizes):
      assert a == b if b >= np.floor(cap * s) else a <= np.floor(cap * s)
    masks = new


@pytest.mark.parametrize('seed', range(4))
def test_layer_cap_choice_minimises_the_pruned_magnitude(seed):
  # Brute force over every allowed set on a tiny model: the capped choice is the cheapest one.
  rng = np.random.default_rng(seed)
  params = {'encoder': {'a': {'kernel': rng.standard_normal((2, 3)) * 0.01},
                        'b': {'kernel': rng.standard_normal((2, 2))},
                        'c': {'kernel': rng.standard_normal((3, 2)) * 0.1}}}
  prunable = sp.prunable_leaves(params, ['encoder'])
  w = np.concatenate([np.abs(p).ravel() for p in jax.tree.leaves(params)])
  leaf_of = np.repeat([0, 1, 2], [6, 4, 6])
  for cap, n in ((0.5, 7), (0.34, 5), (0.75, 10)):
    limits = [np.floor(cap * 6), np.floor(cap * 4), np.floor(cap * 6)]
    sets = np.array(list(itertools.combinations(range(w.size), n)))
    per_leaf = np.stack([(leaf_of[sets] == k).sum(axis=1) for k in range(3)], axis=1)
    sets = sets[np.all(per_leaf <= limits, axis=1)]
    best = sets[np.argmin(w[sets].sum(axis=1))]
    got = sp.prune_to_sparsity(params, prunable, n / w.size, layer_cap=cap)
    _, alive = _flat_prunable(params, got, prunable)
    np.testing.assert_array_equal(np.flatnonzero(~alive), sorted(best))


def test_layer_cap_below_the_request_prunes_every_allowance_without_error():
  params = _tiny_encoder_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  sizes = _prunable_sizes(params, prunable)
  start = sp.ones_masks(params)
  start['encoder']['conv2']['kernel'].reshape(-1)[:5] = False
  for masks in (sp.global_magnitude_prune(params, start, prunable, 0.9, layer_cap=0.2),
                sp.prune_to_sparsity(params, prunable, 0.9, masks=start, layer_cap=0.2)):
    assert _pruned_counts(masks, prunable) == [s // 5 for s in sizes]  # floor(0.2 * size), each
    _pruned_positions(start, masks, prunable)
  # Layer-wise: min(round(fraction * alive), allowance) per leaf.
  layer = sp.layerwise_magnitude_prune(params, start, prunable, 0.5, layer_cap=0.3)
  before = _pruned_counts(start, prunable)
  expected = [b + min(round(0.5 * (s - b)), int(np.floor(0.3 * s)) - b) for b, s in zip(before, sizes)]
  assert _pruned_counts(layer, prunable) == expected
  assert not layer['encoder']['conv2']['kernel'].reshape(-1)[:5].any()


def test_prune_to_sparsity_with_a_cap_hits_the_exact_count():
  params = _tiny_encoder_params(decimals=2)
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  sizes = _prunable_sizes(params, prunable)
  total = sum(sizes)
  for s, cap in ((0.3, 0.4), (0.5, 0.6), (0.55, 0.6)):  # allowances: 208 at 0.4, 310 at 0.6
    masks = sp.prune_to_sparsity(params, prunable, s, layer_cap=cap)
    assert sum(_pruned_counts(masks, prunable)) == round(s * total)
    assert all(c <= np.floor(cap * size) for c, size in zip(_pruned_counts(masks, prunable), sizes))
    _assert_same_masks(masks, _greedy_capped(params, sp.ones_masks(params), prunable, round(s * total), cap))
  start = sp.global_magnitude_prune(params, sp.ones_masks(params), prunable, 0.2, layer_cap=0.5)
  masks = sp.prune_to_sparsity(params, prunable, 0.45, masks=start, layer_cap=0.5)
  assert sum(_pruned_counts(masks, prunable)) == round(0.45 * total)
  _pruned_positions(start, masks, prunable)


def test_prune_like_copies_the_per_layer_counts_with_its_own_magnitudes():
  params = _toy_params(0)
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  reference = sp.global_magnitude_prune(_toy_params(5), sp.ones_masks(params), prunable, 0.6)
  reference['decoder']['conv1']['bias'][:3] = False  # not prunable: ignored
  like = sp.prune_like(params, prunable, reference)
  assert _pruned_counts(like, prunable) == _pruned_counts(reference, prunable)
  assert len(set(_pruned_counts(like, prunable))) > 1  # the layers really differ
  for path, p, m, f in zip(sp.leaf_paths(params), jax.tree.leaves(params), jax.tree.leaves(like),
                           jax.tree.leaves(prunable)):
    assert isinstance(m, np.ndarray) and m.dtype == np.bool_ and m.shape == p.shape
    if not f:
      assert m.all(), path
      continue
    k = int((~m).sum())
    assert set(np.flatnonzero(~m.ravel())) == set(np.argsort(np.abs(p).ravel(), kind='stable')[:k]), path

  # From existing masks: old zeros stay, the rest are the smallest alive of each leaf.
  start = sp.layerwise_magnitude_prune(_toy_params(7), sp.ones_masks(params), prunable, 0.1)
  like = sp.prune_like(params, prunable, reference, masks=start)
  assert _pruned_counts(like, prunable) == _pruned_counts(reference, prunable)
  for p, m0, m, f in zip(jax.tree.leaves(params), jax.tree.leaves(start), jax.tree.leaves(like),
                         jax.tree.leaves(prunable)):
    if f:
      m0, m, w = m0.ravel(), m.ravel(), np.abs(p).ravel()
      assert not np.any(m & ~m0)
      alive = np.flatnonzero(m0)
      k = int((m0 & ~m).sum())
      assert set(np.flatnonzero(m0 & ~m)) == set(alive[np.argsort(w[alive], kind='stable')[:k]])

  too_many = sp.ones_masks(params)
  too_many['encoder']['conv2']['kernel'][...] = False
  with pytest.raises(UserError, match='encoder/conv2/kernel'):
    sp.prune_like(params, prunable, reference, masks=too_many)
  with pytest.raises(UserError, match='structure'):
    sp.prune_like(params, prunable, {'encoder': reference['encoder']})


def test_count_by_group_matches_a_hand_computation():
  masks = {'decoder': {'a': {'kernel': np.array([[True, False, True], [False, True, True]]),
                             'bias': np.array([False, True, True])}},
           'encoder': {'b': {'kernel': np.ones((2, 2), bool)}},
           'transform': {'c': {'kernel': np.zeros((3, 1), bool), 'bias': np.array([True])}}}
  groups = sp.count_by_group(masks)
  assert groups == {'decoder': {'size': 9, 'remaining': 6, 'sparsity': 3 / 9},
                    'encoder': {'size': 4, 'remaining': 4, 'sparsity': 0.0},
                    'transform': {'size': 4, 'remaining': 1, 'sparsity': 3 / 4}}
  assert all(isinstance(e['sparsity'], float) for e in groups.values())
  shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, jnp.float32), masks)
  assert sp.count_by_group(masks, shapes) == groups
  shapes['encoder']['b']['kernel'] = jax.ShapeDtypeStruct((4,), jnp.float32)
  with pytest.raises(UserError, match='shape'):
    sp.count_by_group(masks, shapes)


def test_collapsed_layers_are_those_above_the_threshold():
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  masks['encoder']['conv1']['kernel'][...] = False  # 1.0
  masks['decoder']['conv1']['kernel'].reshape(-1)[:286] = False  # 286 / 288 = 0.9931
  masks['decoder']['dense']['kernel'].reshape(-1)[:15] = False  # 15 / 16 = 0.9375
  report = sp.count(masks, prunable)
  assert sp.collapsed_layers(report) == ['decoder/conv1/kernel', 'encoder/conv1/kernel']
  assert sp.collapsed_layers(report, threshold=0.9) == ['decoder/conv1/kernel', 'decoder/dense/kernel',
                                                        'encoder/conv1/kernel']
  assert sp.collapsed_layers(report, threshold=0.995) == ['encoder/conv1/kernel']
  assert sp.collapsed_layers(report, threshold=1.0) == []
  assert sp.collapsed_layers(sp.count(sp.ones_masks(params), prunable), threshold=0.0) == []


@pytest.mark.parametrize('cap', [0, 0.0, 1.5, -0.2, float('nan')])
def test_bad_layer_cap_raises_user_error(cap):
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  masks = sp.ones_masks(params)
  with pytest.raises(UserError, match='layer cap'):
    sp.global_magnitude_prune(params, masks, prunable, 0.2, layer_cap=cap)
  with pytest.raises(UserError, match='layer cap'):
    sp.prune_to_sparsity(params, prunable, 0.2, layer_cap=cap)
  with pytest.raises(UserError, match='layer cap'):
    sp.layerwise_magnitude_prune(params, masks, prunable, 0.2, layer_cap=cap)


@pytest.mark.parametrize('method, target', [('global', 0.0), ('lamp', 0.0), ('layerwise', 0.0), ('global', 0.6),
                                            ('lamp', 0.6), ('layerwise', 0.6)])
def test_early_bird_masks_are_round_ones_pruning_or_the_target_sparsitys(method, target):
  from jaxtickets import config as config_lib  # pylint: disable=g-import-not-at-top

  config = config_lib.default_config()
  config.sparsity.method, config.imp.target_sparsity = method, target
  params = _toy_params()
  prunable = sp.prunable_leaves(params, ['encoder', 'decoder'])
  pruning = config_lib.resolve(config).protocol.pruning
  got = sp.early_bird_masks(pruning, target, prunable)(params)
  if target:  # layer-wise pruning has no one-shot target of its own: global magnitudes stand in
    want = sp.prune_to_sparsity(params, prunable, target, method='lamp' if method == 'lamp' else 'global')
  else:
    want = sp.prune(pruning, params, sp.ones_masks(params), prunable)
  jax.tree.map(np.testing.assert_array_equal, got, want)
