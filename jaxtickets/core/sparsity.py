"""Masks as pytrees: prunable leaves, magnitude (global, layer-wise, LAMP) and random pruning, applying masks, sparsity
reports.

A mask pytree has exactly the params' structure with boolean leaves (True = weight kept). Masks and
prunable trees live on the host as numpy; only `apply_masks` runs inside jit.
"""

from collections.abc import Callable, Sequence
import fnmatch
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtickets.errors import UserError
from jaxtickets.models import GROUPS

PyTree = Any
_GLOB_CHARS = '*?['


def path_name(keypath) -> str:
  """Joins a jax key path into 'decoder/conv3_4/kernel'."""
  parts = []
  for entry in keypath:
    for attr in ('key', 'name', 'idx'):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return '/'.join(parts)


def leaf_paths(params: PyTree) -> list[str]:
  """Path names of all leaves, in jax.tree.leaves order."""
  return [path_name(kp) for kp, _ in jax.tree.leaves_with_path(params)]


def _check_structure(tree: PyTree, params: PyTree, what: str) -> None:
  """Raises UserError when `tree` does not have the params' structure (e.g. masks of another model)."""
  if jax.tree.structure(tree) != jax.tree.structure(params):
    raise UserError(
        f'The {what} do not have the structure of the params (leaves {leaf_paths(tree)[:3]}... vs '
        f'{leaf_paths(params)[:3]}...); use {what} made for this model and scope.')


def _is_kernel(path: str, leaf) -> bool:
  return path.rsplit('/', 1)[-1] == 'kernel' and np.ndim(leaf) >= 2


def _matches(path: str, pattern: str) -> bool:
  # A pattern also covers everything below it, so 'encoder' or 'decoder/conv3_4' select whole subtrees.
  pattern = pattern.strip('/')
  return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern + '/*')


def prunable_leaves(params: PyTree, scope: Sequence[str] | str,
                    allow_missing_groups: bool = False) -> PyTree:
  """Python-bool pytree: True for kernels (ndim >= 2, never biases) whose path matches a scope pattern."""
  if isinstance(scope, str):
    scope = [scope]
  flat, treedef = jax.tree.flatten_with_path(params)
  paths = [path_name(kp) for kp, _ in flat]
  kernels = [_is_kernel(p, leaf) for p, (_, leaf) in zip(paths, flat)]
  present = sorted({p.split('/', 1)[0] for p in paths})
  selected = [False] * len(paths)
  for pattern in scope:
    hits = [i for i, p in enumerate(paths) if kernels[i] and _matches(p, pattern)]
    if not hits:
      head = pattern.strip('/').split('/', 1)[0]
      missing_group = head in GROUPS and head not in present and not any(c in head for c in _GLOB_CHARS)
      if missing_group and allow_missing_groups:
        continue
      raise UserError(
          f'Scope pattern {pattern!r} matches no prunable kernel in the params (groups present: '
          f'{", ".join(present) or "none"}); use a group name or a glob such as "decoder/conv*".')
    for i in hits:
      selected[i] = True
  return jax.tree.unflatten(treedef, selected)


def ones_masks(params: PyTree) -> PyTree:
  """All-True numpy masks with the params' structure and shapes."""
  return jax.tree.map(lambda p: np.ones(np.shape(p), dtype=np.bool_), params)


def _zero_where_pruned(p, m):
  # lax.select, not jnp.where: jnp.where nests a jitted helper that costs ten times as much to trace per new shape
  # under vmap and grad. A 0/1 or broadcastable mask selects as jnp.where would.
  return jax.lax.select(jnp.broadcast_to(jnp.asarray(m, bool), np.shape(p)), p, jax.lax.full_like(p, 0))


def apply_masks(params: PyTree, masks: PyTree) -> PyTree:
  """Zeros masked-out entries leafwise (params, grads or updates); jittable."""
  _check_structure(masks, params, 'masks')
  return jax.tree.map(_zero_where_pruned, params, masks)


def _check_fraction(value: float, name: str) -> float:
  if not 0.0 <= value <= 1.0:
    raise UserError(f'The pruning {name} is {value}; give a fraction between 0 and 1.')
  return float(value)


def _check_cap(layer_cap: float) -> float:
  if not 0.0 < layer_cap <= 1.0:
    raise UserError(f'The layer cap is {layer_cap}; give the largest sparsity a layer may reach, a fraction '
                    'above 0 and at most 1 (1 = no cap).')
  return float(layer_cap)


def _allowances(masks: PyTree, leaves, layer_cap: float) -> dict[int, int]:
  """Per prunable leaf index: how many more weights it may lose, floor(cap * size) minus those already pruned."""
  sizes = [int(np.size(m)) for m in jax.tree.leaves(masks)]
  # Already beyond the cap (older masks, or a cap lowered between rounds): the leaf loses nothing more. The tiny
  # slack keeps a product like 0.29 * 100 = 28.999... at 29.
  return {i: max(0, math.floor(layer_cap * sizes[i] + 1e-9) - (sizes[i] - alive.size)) for i, alive, _ in leaves}


def _alive_scores(params: PyTree, masks: PyTree, prunable: PyTree):
  """Per prunable leaf: (index, flat alive positions, |w| at those positions), host-side numpy."""
  _check_structure(masks, params, 'masks')
  _check_structure(prunable, params, 'prunable flags')
  flat_p = jax.tree.leaves_with_path(params)
  flat_m = jax.tree.leaves(masks)
  flat_f = jax.tree.leaves(prunable)
  out = []
  for i, ((kp, p), m, f) in enumerate(zip(flat_p, flat_m, flat_f)):
    if not f:
      continue
    w = np.asarray(p).reshape(-1)
    if w.dtype not in (np.float32, np.float64):
      w = w.astype(np.float32)  # bfloat16 and friends: numpy sorts float32 fastest
    alive = np.flatnonzero(np.asarray(m, dtype=np.bool_).reshape(-1))
    scores = np.abs(w[alive])
    if np.isnan(scores).any():
      raise UserError(f'Parameter {path_name(kp)} contains NaN, so it cannot be pruned by magnitude; '
                      'the training diverged, lower the learning rate.')
    out.append((i, alive, scores))
  return out


def _smallest(scores: np.ndarray, n: int) -> np.ndarray:
  """Bool array marking the n smallest scores; ties go to the lower index, so the choice is deterministic."""
  chosen = np.zeros(scores.shape, dtype=np.bool_)
  if n <= 0:
    return chosen
  if n >= scores.size:
    chosen[:] = True
    return chosen
  threshold = np.partition(scores, n - 1)[n - 1]
  chosen = scores < threshold
  ties = np.flatnonzero(scores == threshold)[:n - int(chosen.sum())]
  chosen[ties] = True
  return chosen


def _masks_without(masks: PyTree, removals: dict[int, np.ndarray]) -> PyTree:
  """New numpy masks: a copy of `masks` with the flat positions in removals[leaf_index] set False."""
  leaves, treedef = jax.tree.flatten(masks)
  new = []
  for i, m in enumerate(leaves):
    m = np.array(m, dtype=np.bool_)  # a copy, so the caller's masks stay untouched
    if i in removals:
      m.reshape(-1)[removals[i]] = False
    new.append(m)
  return jax.tree.unflatten(treedef, new)


def lamp_scores(magnitudes: np.ndarray) -> np.ndarray:
  """LAMP scores of one layer's alive weights (Lee et al. 2021), in the order given.

  With the layer's weights sorted by magnitude ascending, weight u scores w_u^2 / sum_{v >= u} w_v^2: its share of
  the squared weights at least as large as it. Ties in magnitude go by position (the lower position sorts first, as
  the other pruners break ties), so the last of the sorted weights, the layer's largest, scores exactly 1 and no
  layer is emptied before every layer is down to one weight.
  """
  order = np.argsort(magnitudes, kind='stable')
  squares = np.square(magnitudes[order].astype(np.float64))
  # Float64 suffix sums, added from the large end: a small weight's score in a big layer stays exact.
  suffix = np.cumsum(squares[::-1])[::-1]
  ranked = np.divide(squares, suffix, out=np.zeros_like(squares), where=suffix > 0)
  if ranked.size:
    ranked[-1] = 1.0  # w^2 / w^2, also for a layer whose alive weights are all 0
  scores = np.empty_like(ranked)
  scores[order] = ranked
  return scores


def _prune_n_globally(params, masks, prunable, n: int, layer_cap: float = 1.0, method: str = 'global') -> PyTree:
  """Removes the n alive prunable weights with the smallest scores, across all prunable leaves.

  The score is |w| ('global') or the weight's LAMP score within its leaf ('lamp'); both order a leaf's weights alike,
  so a capped leaf loses its smallest |w| either way. No leaf ends with more than floor(layer_cap * size) pruned;
  what a capped leaf cannot give comes from the others. When the allowances add up to fewer than n, every allowed
  weight is pruned.
  """
  if method not in ('global', 'lamp'):
    raise UserError(f"The pruning method is {method!r}; choose 'global' or 'lamp'.")
  pool = _alive_scores(params, masks, prunable)
  if method == 'lamp':
    pool = [(i, alive, lamp_scores(scores)) for i, alive, scores in pool]
  allowed = _allowances(masks, pool, layer_cap)
  removals = {}
  # A leaf holding more than its allowance among the pool's n smallest also fills its allowance in the exact
  # solution (the stable sort, skipping full leaves), with its own smallest: fix it, and solve the rest again.
  # Every pass fixes at least one leaf; with no cap binding the first pass is the plain global choice.
  while pool:
    chosen = _smallest(np.concatenate([s for _, _, s in pool]), n)
    parts = np.split(chosen, np.cumsum([s.size for _, _, s in pool])[:-1])
    over = {k for k, ((i, _, _), part) in enumerate(zip(pool, parts)) if np.count_nonzero(part) > allowed[i]}
    if not over:
      removals.update({i: alive[part] for (i, alive, _), part in zip(pool, parts)})
      break
    for k in over:
      i, alive, scores = pool[k]
      removals[i] = alive[_smallest(scores, allowed[i])]
      n -= allowed[i]
    pool = [leaf for k, leaf in enumerate(pool) if k not in over]
  return _masks_without(masks, removals)


def global_magnitude_prune(params: PyTree, masks: PyTree, prunable: PyTree, fraction: float,
                           layer_cap: float = 1.0) -> PyTree:
  """Prunes round(fraction * alive) of the alive prunable weights with the smallest |w|, globally.

  layer_cap < 1 keeps every leaf at or below floor(layer_cap * size) pruned (see _prune_n_globally).
  """
  fraction = _check_fraction(fraction, 'fraction')
  layer_cap = _check_cap(layer_cap)
  alive = sum(a.size for _, a, _ in _alive_scores(params, masks, prunable))
  return _prune_n_globally(params, masks, prunable, round(fraction * alive), layer_cap)


def lamp_prune(params: PyTree, masks: PyTree, prunable: PyTree, fraction: float, layer_cap: float = 1.0) -> PyTree:
  """Layer-adaptive magnitude pruning (LAMP, Lee et al. 2021): prunes round(fraction * alive) of the alive prunable
  weights with the smallest LAMP scores (see lamp_scores), one threshold over all leaves.

  Pruned weights stay pruned and take no part in the scores. layer_cap < 1 caps every leaf as in global pruning.
  """
  fraction = _check_fraction(fraction, 'fraction')
  layer_cap = _check_cap(layer_cap)
  alive = sum(a.size for _, a, _ in _alive_scores(params, masks, prunable))
  return _prune_n_globally(params, masks, prunable, round(fraction * alive), layer_cap, method='lamp')


def layerwise_magnitude_prune(params: PyTree, masks: PyTree, prunable: PyTree, fraction: float,
                              layer_cap: float = 1.0) -> PyTree:
  """Prunes min(round(fraction * alive_in_leaf), its cap allowance) of the smallest |w| in every prunable leaf."""
  fraction = _check_fraction(fraction, 'fraction')
  layer_cap = _check_cap(layer_cap)
  leaves = _alive_scores(params, masks, prunable)
  allowed = _allowances(masks, leaves, layer_cap)
  removals = {i: alive[_smallest(scores, min(round(fraction * alive.size), allowed[i]))]
              for i, alive, scores in leaves}
  return _masks_without(masks, removals)


def prune_to_sparsity(params: PyTree, prunable: PyTree, sparsity: float, masks: PyTree = None,
                      layer_cap: float = 1.0, method: str = 'global') -> PyTree:
  """One-shot pruning until exactly round(sparsity * prunable size) prunable weights are zero, by the smallest |w|
  over all leaves ('global') or the smallest LAMP scores ('lamp').

  With layer_cap < 1 the target may be out of reach; then every weight the caps allow is pruned, and the
  caller reads the reached sparsity from `count`.
  """
  sparsity = _check_fraction(sparsity, 'sparsity')
  layer_cap = _check_cap(layer_cap)
  masks = ones_masks(params) if masks is None else masks
  total = count(masks, prunable)['prunable']
  already = total['size'] - total['remaining']
  target = round(sparsity * total['size'])
  if target < already:
    raise UserError(f'The masks already prune {already / total["size"]:.4f} of the prunable weights, more '
                    f'than the requested sparsity {sparsity}; ask for a higher sparsity or start from all-ones masks.')
  return _prune_n_globally(params, masks, prunable, target - already, layer_cap, method)


def prune_like(params: PyTree, prunable: PyTree, reference_masks: PyTree, masks: PyTree = None) -> PyTree:
  """Layer-wise one shot: every prunable leaf loses its smallest |w| until it has the reference's pruned count.

  The one-shot baseline of layer-wise IMP: the same per-layer counts, positions from these params' magnitudes.
  """
  _check_structure(reference_masks, params, 'reference masks')
  masks = ones_masks(params) if masks is None else masks
  leaves = _alive_scores(params, masks, prunable)
  paths, shapes = leaf_paths(params), [np.shape(p) for p in jax.tree.leaves(params)]
  refs = jax.tree.leaves(reference_masks)
  removals = {}
  for i, alive, scores in leaves:
    ref = np.asarray(refs[i], dtype=np.bool_)
    if ref.shape != shapes[i]:
      raise UserError(f'The reference mask of {paths[i]} has shape {ref.shape}, the parameter {shapes[i]}; '
                      'use reference masks made for this model.')
    size = ref.size
    target, already = size - int(np.count_nonzero(ref)), size - alive.size
    if already > target:
      raise UserError(f'The masks already prune {already} weights of {paths[i]}, more than the {target} of the '
                      'reference masks; start from all-ones masks or from an earlier round.')
    removals[i] = alive[_smallest(scores, target - already)]
  return _masks_without(masks, removals)


def random_prune_like(reference_masks: PyTree, prunable: PyTree, seed: int) -> PyTree:
  """Masks with the reference's pruned count in every prunable leaf at random positions; others all True."""
  _check_structure(prunable, reference_masks, 'prunable flags')
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(reference_masks)
  new = []
  for ref, flag in zip(leaves, jax.tree.leaves(prunable)):
    ref = np.asarray(ref, dtype=np.bool_)
    m = np.ones(ref.shape, dtype=np.bool_)
    if flag:
      pruned = int(ref.size - np.count_nonzero(ref))
      m.reshape(-1)[rng.choice(ref.size, size=pruned, replace=False)] = False
    new.append(m)
  return jax.tree.unflatten(treedef, new)


def prune(pruning, params: PyTree, masks: PyTree, prunable: PyTree) -> PyTree:
  """One IMP pruning step (a settings.Pruning): its fraction of the surviving prunable weights (all when masks is
  None), smallest magnitude."""
  masks = ones_masks(params) if masks is None else masks
  fn = {'global': global_magnitude_prune, 'layerwise': layerwise_magnitude_prune, 'lamp': lamp_prune}
  return fn[pruning.method](params, masks, prunable, pruning.fraction, layer_cap=pruning.layer_cap)


def early_bird_masks(pruning, target_sparsity: float, prunable: PyTree) -> Callable[[PyTree], PyTree]:
  """params -> the masks the early-bird test compares: the dense network pruned as round 1 would prune it, or
  straight to `target_sparsity` when that is set (globally, or by LAMP scores)."""
  if target_sparsity:
    method = 'lamp' if pruning.method == 'lamp' else 'global'
    return functools.partial(prune_to_sparsity, prunable=prunable, sparsity=target_sparsity,
                             layer_cap=pruning.layer_cap, method=method)
  return functools.partial(prune, pruning, masks=None, prunable=prunable)


def oneshot_masks(pruning, dense_params: PyTree, imp_masks: PyTree, prunable: PyTree) -> PyTree:
  """The one-shot baseline's masks: the dense round's trained weights pruned straight to IMP's round, globally or by
  LAMP scores (IMP's total count, under the same layer cap) or layer-wise (IMP's count in every layer)."""
  if pruning.method == 'layerwise':
    return prune_like(dense_params, prunable, imp_masks)
  target = count(imp_masks, prunable)['prunable']['sparsity']
  return prune_to_sparsity(dense_params, prunable, target, layer_cap=pruning.layer_cap, method=pruning.method)


def _entry(size: int, remaining: int) -> dict:
  return {'size': size, 'remaining': remaining,
          'sparsity': float((size - remaining) / size) if size else 0.0}


def _check_shapes(masks: PyTree, params: PyTree) -> None:
  """Raises UserError unless every mask leaf has its parameter's shape (params, or ShapeDtypeStructs)."""
  _check_structure(masks, params, 'masks')
  for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
    if np.shape(p) != np.shape(m):
      raise UserError(f'A mask of shape {np.shape(m)} does not fit a parameter of shape {np.shape(p)}; '
                      'use masks made for this model.')


def count(masks: PyTree, prunable: PyTree, params: PyTree = None) -> dict:
  """Sparsity report: per prunable layer, over prunable leaves, and over all params (others count as kept)."""
  if params is not None:
    _check_shapes(masks, params)
  _check_structure(prunable, masks, 'prunable flags')
  layers = {}
  total_size = total_pruned = 0
  for (kp, m), flag in zip(jax.tree.leaves_with_path(masks), jax.tree.leaves(prunable)):
    size = int(np.size(m))
    total_size += size
    if flag:
      remaining = int(np.count_nonzero(np.asarray(m)))
      layers[path_name(kp)] = _entry(size, remaining)
      total_pruned += size - remaining
  p_size = sum(e['size'] for e in layers.values())
  p_remaining = sum(e['remaining'] for e in layers.values())
  return {'layers': layers,
          'prunable': _entry(p_size, p_remaining),
          'total': _entry(total_size, total_size - total_pruned)}


def count_by_group(masks: PyTree, params_or_shapes: PyTree = None) -> dict:
  """Per top-level group ('encoder', ...): size, remaining and sparsity over all its leaves, biases included."""
  if params_or_shapes is not None:
    _check_shapes(masks, params_or_shapes)
  sizes, remaining = {}, {}
  for kp, m in jax.tree.leaves_with_path(masks):
    group = path_name(kp).split('/', 1)[0]
    sizes[group] = sizes.get(group, 0) + int(np.size(m))
    remaining[group] = remaining.get(group, 0) + int(np.count_nonzero(np.asarray(m)))
  return {g: _entry(sizes[g], remaining[g]) for g in sizes}


def collapsed_layers(report: dict, threshold: float = 0.99) -> list[str]:
  """Paths of the layers in a `count` report pruned beyond `threshold`: near-empty layers can cut the signal."""
  return [path for path, e in report['layers'].items() if e['sparsity'] > threshold]


def format_sparsity_table(report: dict) -> str:
  """A fixed-width table of the per-layer sparsity and both totals, fractions with 4 decimals."""
  rows = [(path, e) for path, e in report['layers'].items()]
  rows += [('prunable tensors', report['prunable']), ('total (all parameters)', report['total'])]
  width = max(len('layer'), *(len(name) for name, _ in rows))
  line = f'{{:<{width}}}  {{:>12}}  {{:>12}}  {{:>8}}'
  out = [line.format('layer', 'size', 'remaining', 'sparsity'), '-' * (width + 40)]
  for i, (name, e) in enumerate(rows):
    if i == len(report['layers']):
      out.append('-' * (width + 40))
    out.append(line.format(name, e['size'], e['remaining'], f'{e["sparsity"]:.4f}'))
  return '\n'.join(out)
