"""Tests for jaxtickets.store.checkpoint: tickets, lone params trees and JSON files on disk."""

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtickets.store import checkpoint
from jaxtickets.errors import UserError


def _params(seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
  return {
      'encoder': {'conv1_1': {'kernel': f32(3, 3, 3, 8), 'bias': f32(8)}},
      'decoder': {'conv0': {'kernel': f32(3, 3, 8, 3), 'bias': f32(3)}},
      'transform': {'fc': {'kernel': f32(8, 8), 'bias': f32(8)}},
  }


def _masks(params, seed=1):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: rng.random(p.shape) > 0.3, params)


def _ticket_kwargs():
  rewind = _params(0)
  masks = _masks(rewind)
  trained = jax.tree.map(lambda p, m: p * 2.0 * m, _params(5), masks)
  metrics = {'content': np.float32(1.25), 'style': 0.5, 'total': 1.75, 'matches': True, 'round': 3,
             'branch': 'imp', 'steps': np.int64(40)}
  sparsity = {'layers': {'encoder/conv1_1/kernel': 0.3125}, 'prunable': 0.2999, 'all': 0.2871}
  return dict(masks=masks, rewind_params=rewind, trained_params=trained, metrics=metrics, sparsity=sparsity)


def _assert_trees_equal(got, want, dtype=None):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert isinstance(g, np.ndarray)
    assert g.dtype == (dtype or w.dtype) and g.shape == w.shape
    np.testing.assert_array_equal(g, w)


def test_ticket_round_trip(tmp_path):
  kw = _ticket_kwargs()
  path = tmp_path / 'tickets' / 'imp' / 'round_03'  # parents do not exist yet
  checkpoint.save_ticket(path, **kw)
  assert checkpoint.ticket_exists(path)
  ticket = checkpoint.load_ticket(path)
  assert ticket.path == str(path)
  _assert_trees_equal(ticket.masks, kw['masks'], dtype=np.bool_)
  _assert_trees_equal(ticket.rewind_params, kw['rewind_params'])
  _assert_trees_equal(ticket.trained_params, kw['trained_params'])
  assert ticket.metrics == {'content': 1.25, 'style': 0.5, 'total': 1.75, 'matches': True, 'round': 3,
                            'branch': 'imp', 'steps': 40}
  assert isinstance(ticket.metrics['matches'], bool) and isinstance(ticket.metrics['steps'], int)
  assert ticket.sparsity == kw['sparsity']
  # No temporary sibling is left behind by a finished save.
  assert sorted(os.listdir(path.parent)) == ['round_03']


def test_ticket_from_jax_arrays_comes_back_as_numpy(tmp_path):
  kw = _ticket_kwargs()
  kw['masks'] = jax.tree.map(jnp.asarray, kw['masks'])
  kw['trained_params'] = jax.tree.map(jnp.asarray, kw['trained_params'])
  checkpoint.save_ticket(tmp_path / 't', **kw)
  ticket = checkpoint.load_ticket(tmp_path / 't')
  _assert_trees_equal(ticket.masks, jax.tree.map(np.asarray, kw['masks']), dtype=np.bool_)
  _assert_trees_equal(ticket.trained_params, jax.tree.map(np.asarray, kw['trained_params']))


def test_save_ticket_refuses_to_overwrite(tmp_path):
  kw = _ticket_kwargs()
  path = tmp_path / 't'
  checkpoint.save_ticket(path, **kw)
  kw2 = dict(kw, metrics={'round': 4})
  with pytest.raises(UserError, match="already exists at '.*t'.*overwrite=True"):
    checkpoint.save_ticket(path, **kw2)
  assert checkpoint.load_ticket(path).metrics['round'] == 3  # untouched
  checkpoint.save_ticket(path, overwrite=True, **kw2)
  assert checkpoint.load_ticket(path).metrics == {'round': 4}


def test_save_ticket_refuses_a_foreign_directory(tmp_path):
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_text('keep me')
  with pytest.raises(UserError, match="'.*mine' already exists and is not a ticket"):
    checkpoint.save_ticket(tmp_path / 'mine', **_ticket_kwargs())
  assert (tmp_path / 'mine' / 'notes.txt').read_text() == 'keep me'
  (tmp_path / 'empty').mkdir()  # an empty directory holds nothing to lose
  checkpoint.save_ticket(tmp_path / 'empty', **_ticket_kwargs())
  assert checkpoint.ticket_exists(tmp_path / 'empty')


def test_ticket_exists_false_for_missing_and_half_written(tmp_path):
  assert not checkpoint.ticket_exists(tmp_path / 'nothing')
  checkpoint.save_ticket(tmp_path / 'done', **_ticket_kwargs())
  # What a crash mid-save leaves: Orbax's temporary sibling, never the final name.
  half = tmp_path / 'round_01.orbax-checkpoint-tmp'
  shutil.copytree(tmp_path / 'done', half)
  assert not checkpoint.ticket_exists(half)
  assert not checkpoint.ticket_exists(tmp_path / 'round_01')
  with pytest.raises(UserError, match='never finalized'):
    checkpoint.load_ticket(half)
  # A later save of the same ticket replaces the leftover and succeeds.
  checkpoint.save_ticket(tmp_path / 'round_01', **_ticket_kwargs())
  assert checkpoint.ticket_exists(tmp_path / 'round_01')
  assert not half.exists()
  # A directory with an item missing is not complete either.
  shutil.rmtree(tmp_path / 'done' / 'sparsity')
  assert not checkpoint.ticket_exists(tmp_path / 'done')


def test_load_ticket_missing_path(tmp_path):
  with pytest.raises(UserError, match=r"^No ticket at '.*nowhere': the directory does not exist"):
    checkpoint.load_ticket(tmp_path / 'nowhere')


# A failed restore can leave tensorstore reads in flight that later post to Orbax's closed event loop
# ("RuntimeError: Event loop is closed", printed, harmless); that is Orbax's business, not this test's.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', ['delete_item', 'delete_data', 'truncate_data', 'truncate_json',
                                    'delete_array_metadata'])
def test_load_ticket_damaged(tmp_path, damage):
  path = tmp_path / 'ticket'
  checkpoint.save_ticket(path, **_ticket_kwargs())
  data = [f for f in glob.glob(str(path / 'trained_params' / 'd' / '*'))]
  assert data, 'expected Orbax data files under trained_params/d'
  if damage == 'delete_item':
    shutil.rmtree(path / 'masks')
    expected = r"incomplete or damaged: missing '.*ticket/masks'"
  elif damage == 'delete_data':
    for f in data:
      os.remove(f)
    expected = r"damaged: '.*trained_params/d/\w+' could not be read \(a file is missing"
  elif damage == 'truncate_data':
    for f in data:
      with open(f, 'r+b') as fh:
        fh.truncate(3)
    expected = r"damaged: '.*trained_params/d/\w+' could not be read \(a file is truncated"
  elif damage == 'truncate_json':
    with open(path / 'metrics' / 'metadata', 'r+b') as fh:
      fh.truncate(4)
    expected = r"damaged: '.*ticket/metrics/metadata' could not be read \(JSONDecodeError"
  else:
    os.remove(path / 'rewind_params' / '_METADATA')
    expected = r"damaged: '.*ticket/rewind_params' could not be read"
  with pytest.raises(UserError, match=expected) as info:
    checkpoint.load_ticket(path)
  message = str(info.value)
  assert str(path) in message and '\n' not in message and len(message) < 600


def test_params_round_trip(tmp_path):
  params = _params(7)
  params['transform'] = {}  # AdaIN's transform has no parameters
  checkpoint.save_params(tmp_path / 'init' / 'theta_0', params)
  assert checkpoint.params_exist(tmp_path / 'init' / 'theta_0')
  _assert_trees_equal(checkpoint.load_params(tmp_path / 'init' / 'theta_0'), params)
  assert checkpoint.load_params(tmp_path / 'init' / 'theta_0')['transform'] == {}
  with pytest.raises(UserError, match='already exists'):
    checkpoint.save_params(tmp_path / 'init' / 'theta_0', params)
  checkpoint.save_params(tmp_path / 'init' / 'theta_0', _params(8), overwrite=True)
  _assert_trees_equal(checkpoint.load_params(tmp_path / 'init' / 'theta_0'), _params(8))
  with pytest.raises(UserError, match="No params checkpoint at '.*missing'"):
    checkpoint.load_params(tmp_path / 'missing')
  # A ticket directory is not a params checkpoint and vice versa.
  assert not checkpoint.ticket_exists(tmp_path / 'init' / 'theta_0')


def test_json_helpers(tmp_path):
  obj = {'a': 1, 'b': [1.5, 'x', None, True], 'c': {'d': np.float32(0.25), 'e': np.arange(3)}}
  path = tmp_path / 'sub' / 'config.json'
  checkpoint.save_json(path, obj)
  assert checkpoint.load_json(path) == {'a': 1, 'b': [1.5, 'x', None, True], 'c': {'d': 0.25, 'e': [0, 1, 2]}}
  checkpoint.save_json(path, {'a': 2})  # replaced in place
  assert checkpoint.load_json(path) == {'a': 2}
  assert os.listdir(tmp_path / 'sub') == ['config.json']  # no temporary file left behind
  with pytest.raises(UserError, match="No JSON file at '.*absent.json'"):
    checkpoint.load_json(tmp_path / 'absent.json')
  (tmp_path / 'bad.json').write_text('{"a": ')
  with pytest.raises(UserError, match="'.*bad.json' is not readable JSON"):
    checkpoint.load_json(tmp_path / 'bad.json')


# ----------------------------------------------------------------------------- train-state checkpoints


def _state(step):
  params = jax.tree.map(lambda p: p + step, _params(0))
  return {'step': jnp.int32(step), 'params': params, 'opt_state': {'mu': jax.tree.map(np.zeros_like, params)},
          'nan_skips': jnp.int32(0), 'first_bad': jnp.int32(-1)}


RUNS = [{'branch': 'imp', 'round': 1, 'replicate': 0}, {'branch': 'imp', 'round': 1, 'replicate': 1}]


def _pack(step, masks):
  """A pack of two runs: run 1's params are run 0's + 100, so a slot mix-up shows."""
  one, two = _state(step), jax.tree.map(lambda x: x + 100, _state(step))
  two['step'] = jnp.int32(step)
  stack = lambda a, b: jax.tree.map(lambda x, y: np.stack([np.asarray(x), np.asarray(y)]), a, b)
  return stack(one, two), stack(masks, masks)


def _saved_manager(tmp_path, steps=(2, 4, 6), round_=1, keep=3, async_save=True):
  logs = []
  ck = checkpoint.TrainCheckpoints(tmp_path / 'state', keep=keep, async_save=async_save, log=logs.append)
  masks = _masks(_params(0))
  runs = [dict(r, round=round_) for r in RUNS]
  for s in steps:
    state, packed_masks = _pack(s, masks)
    ck.save(s, state, packed_masks, {'pack_size': 2, 'runs': [dict(r, step=s) for r in runs]})
  ck.wait()
  return ck, masks, logs


def _restore(ck, masks, names=RUNS):
  return ck.restore_runs(names, jax.device_get(_state(0)), [masks] * len(names))


def test_train_checkpoints_round_trip_and_keep_each_runs_slot(tmp_path):
  ck, masks, logs = _saved_manager(tmp_path, steps=(2, 4, 6, 8), keep=3)
  assert ck.steps() == [4, 6, 8]  # only the last `keep`
  # Found by name, whatever the order asked in: a resumed run may be packed differently.
  second, first = _restore(ck, masks, [RUNS[1], RUNS[0]])
  assert int(first['step']) == int(second['step']) == 8
  for got, want in zip(jax.tree.leaves(first['params']), jax.tree.leaves(_state(8)['params'])):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(second['params']), jax.tree.leaves(_state(8)['params'])):
    np.testing.assert_array_equal(got, np.asarray(want) + 100)
  assert ck.meta(8)['runs'][1]['replicate'] == 1
  assert not logs
  assert "step 8 in '" in ck.latest()
  ck.close()


@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('damage', ['truncate', 'empty_step_dir', 'delete_item'])
def test_damaged_latest_train_checkpoint_falls_back_to_the_previous(tmp_path, damage):
  ck, masks, logs = _saved_manager(tmp_path)
  ck.close()
  latest = tmp_path / 'state' / '6'
  if damage == 'truncate':
    for f in glob.glob(str(latest / 'state' / '**' / 'd' / '*'), recursive=True):
      with open(f, 'r+b') as fh:
        fh.truncate(3)
  elif damage == 'empty_step_dir':  # a half-written step under its final name (e.g. a non-atomic filesystem)
    shutil.rmtree(latest)
    (tmp_path / 'state' / '8').mkdir()
    latest = tmp_path / 'state' / '8'
  else:
    shutil.rmtree(latest / 'state')
  # What a crash mid-save leaves beside them is never taken for a checkpoint.
  shutil.copytree(tmp_path / 'state' / '2', tmp_path / 'state' / '10.orbax-checkpoint-tmp')
  ck = checkpoint.TrainCheckpoints(tmp_path / 'state', keep=3, async_save=True, log=logs.append)
  first, second = _restore(ck, masks)
  assert int(first['step']) == int(second['step']) == 4
  assert len(logs) == 1 and f"'{latest}' is damaged" in logs[0] and 'falling back to the previous one' in logs[0]
  assert not latest.exists() and ck.steps() == [2, 4]
  assert not (tmp_path / 'state' / '10.orbax-checkpoint-tmp').exists()  # the leftover is swept away
  state, packed_masks = _pack(6, masks)
  ck.save(6, state, packed_masks, {'pack_size': 2, 'runs': RUNS})  # the step can be written again
  ck.close()


def test_train_checkpoints_of_another_round_or_masks_are_not_used(tmp_path):
  ck, masks, logs = _saved_manager(tmp_path, round_=1)
  round_2 = [dict(r, round=2) for r in RUNS]
  assert _restore(ck, masks, round_2) == [None, None]  # round 1's states are not round 2's
  assert not logs
  other = jax.tree.map(lambda m: ~m, masks)
  got = ck.restore_runs(RUNS, jax.device_get(_state(0)), [masks, other])
  assert got[0] is not None and got[1] is None  # run 1's masks changed (a changed config): it starts afresh
  assert 'other masks' in logs[0]
  ck.clear()
  assert ck.steps() == []
  ck.close()


def test_train_state_is_stored_as_one_row_per_dtype_and_slot(tmp_path):
  """Orbax pays per array, so a step stores each slot's leaves end to end, one array per dtype."""
  ck, masks, _ = _saved_manager(tmp_path, steps=(2,))
  ck.close()
  state, _ = _pack(2, masks)
  meta = checkpoint.load_json(tmp_path / 'state' / '2' / 'meta' / 'metadata')
  one = jax.device_get(_state(2))  # one slot's leaves
  sizes = lambda tree, kind: sum(int(np.size(x)) for x in jax.tree.leaves(tree) if np.asarray(x).dtype == kind)
  assert meta['widths'] == {'state': {'float32': sizes(one, np.float32), 'int32': sizes(one, np.int32)},
                            'masks': {'bool': sizes(masks, bool)}}
  # The inverse split gives every leaf of every slot back (slot 1 is slot 0 + 100).
  rows = checkpoint._flat_rows(state)  # pylint: disable=protected-access
  back = checkpoint._split_rows(rows, jax.device_get(_state(0)))  # pylint: disable=protected-access
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)


def test_train_checkpoint_of_other_shapes_starts_afresh_with_a_warning(tmp_path):
  ck, masks, logs = _saved_manager(tmp_path)
  bigger = jax.device_get(_state(0))
  bigger['params'] = jax.tree.map(lambda p: np.zeros(np.shape(p) + (2,), np.float32), bigger['params'])
  assert ck.restore_runs(RUNS, bigger, [masks, masks]) == [None, None]
  assert len(logs) == 1 and 'holds a state of other shapes' in logs[0] and ck.steps() == [2, 4, 6]  # nothing deleted
  ck.close()


def test_a_directory_that_is_not_a_ticket_is_named_so_and_never_to_be_deleted(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(UserError) as e:
    checkpoint.load_ticket(tmp_path)
  assert f"'{tmp_path}' is not a ticket: it holds none of a ticket's parts" in str(e.value)
  assert 'delete' not in str(e.value)
  with pytest.raises(UserError) as e:  # saving onto it does not advise deleting it either
    checkpoint.save_params(tmp_path, {'w': np.zeros(2, np.float32)})
  assert 'choose another path' in str(e.value) and 'delete' not in str(e.value)

