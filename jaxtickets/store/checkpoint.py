"""Orbax storage of tickets, lone params trees and the running round's train state.

Every checkpoint here is one Orbax directory written by a `CompositeCheckpointHandler`. Orbax itself makes the
write atomic: on disk it writes `<path>.orbax-checkpoint-tmp` beside the target and renames it when every item is
done; on GCS, which has no rename, it writes in place and adds `commit_success.txt` last (`_is_complete` asks
Orbax's `is_path_finalized`, which knows both). A crash leaves only the temporary sibling or an unfinalized folder, which `ticket_exists` and `load_ticket` never mistake for a ticket
(the next save of the same path removes it). Saves are collective: in a multi-process run every process must call
`save_ticket`/`save_params` with the same path (arrays may be sharded jax arrays; Orbax writes each shard from its
owner, JSON from the primary process only). Loads read whole arrays into host numpy on every process.
"""

import dataclasses
import json
import logging
import os
import re
from typing import Any

from absl import logging as absl_logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxtickets import storage
from jaxtickets.errors import UserError

_ARRAY_ITEMS = ('masks', 'rewind_params', 'trained_params')
_JSON_ITEMS = ('metrics', 'sparsity')
_PARAMS_ITEM = 'params'
_TMP_SUFFIX = '.orbax-checkpoint-tmp'


class _QuietOrbax(logging.Filter):
  """Drops Orbax's INFO chatter (dozens of lines per save) unless absl verbosity was raised (-v 1)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING or absl_logging.get_verbosity() > absl_logging.INFO:
      return True
    return f'{os.sep}orbax{os.sep}' not in record.pathname


def _install_log_filter() -> None:
  logger = logging.getLogger('absl')
  if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
    logger.addFilter(_QuietOrbax())


_install_log_filter()


@dataclasses.dataclass
class Ticket:
  """One round's ticket: the mask, the weights it rewinds to, the weights it trained to, and its reports."""
  path: str
  masks: dict  # bool numpy tree
  rewind_params: dict  # theta_k as saved (unmasked); the ticket's init is rewind_params * masks
  trained_params: dict  # weights at the end of the round (already masked)
  metrics: dict
  sparsity: dict


def _epath(path) -> epath.Path:
  """An absolute path (Orbax wants one); URLs such as gs://... are kept as they are."""
  return storage.epath_of(path)


def _to_json(obj: Any) -> Any:
  """Plain JSON values from numpy/jax scalars and arrays, so metrics can hold them."""
  if isinstance(obj, dict):
    return {str(k): _to_json(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_to_json(v) for v in obj]
  if isinstance(obj, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(obj).tolist()
  return obj


def _checkpointer(items, *, local: bool = False) -> ocp.Checkpointer:
  """A synchronous Composite checkpointer that knows each item's handler, so a fresh process can read metadata.

  `local` makes it this process's alone: reads then need no barrier with the other processes, so process 0 can
  load tickets for the report while the others have finished (a collective read would wait for them forever).
  """
  registry = ocp.DefaultCheckpointHandlerRegistry()
  for item in items:
    if item in _JSON_ITEMS:
      handler, save, restore = ocp.JsonCheckpointHandler(), ocp.args.JsonSave, ocp.args.JsonRestore
    else:
      handler, save, restore = ocp.StandardCheckpointHandler(), ocp.args.StandardSave, ocp.args.StandardRestore
    registry.add(item, save, handler)
    registry.add(item, restore, handler)
  options = ocp.options.MultiprocessingOptions()
  if local and jax.process_count() > 1:
    me = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                                 barrier_sync_key_prefix=f'read{me}')
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(handler_registry=registry), multiprocessing_options=options)


def _is_complete(path: epath.Path, items) -> bool:
  """True when `path` is a finalized Orbax checkpoint holding every one of `items`."""
  if _TMP_SUFFIX in path.name or not path.is_dir():
    return False
  if not all((path / item).is_dir() for item in items):
    return False
  return ocp.step.is_path_finalized(path)


def _save(path, items: dict, kind: str, overwrite: bool) -> None:
  """Writes `items` (name -> ocp.args) as one Composite checkpoint, atomically via Orbax's tmp + rename."""
  path = _epath(path)
  if path.exists():
    is_empty_dir = path.is_dir() and not any(path.iterdir())
    if not overwrite and not is_empty_dir:
      if _is_complete(path, items):
        raise UserError(f"A {kind} already exists at '{path}'; pass overwrite=True to replace it or choose "
                        'another path.')
      raise UserError(f"'{path}' already exists and is not a {kind}: choose another path (what is there is not "
                      "ours to replace).")
  path.parent.mkdir(parents=True, exist_ok=True)
  checkpointer = _checkpointer(items)
  # force=True removes the old directory first: a crash then loses it but never leaves a half checkpoint.
  checkpointer.save(path, args=ocp.args.Composite(**items), force=path.exists())


_FILE_IN_ERROR = re.compile(r'(?:local file|File) "?([^"\s]+)"?')
_STORE_CODES = {  # tensorstore status codes, in words
    'NOT_FOUND': 'a file is missing',
    'OUT_OF_RANGE': 'a file is truncated',
    'DATA_LOSS': 'a file is corrupt',
    'FAILED_PRECONDITION': 'a file is corrupt',
    'INVALID_ARGUMENT': 'a file is corrupt',
}


def _damage(path: epath.Path, item: str, kind: str, err: Exception) -> UserError:
  """One sentence naming the unreadable file (as far as the error tells) and why."""
  text = str(err).split(' [tensorstore_spec', 1)[0].strip().replace('\n', ' ')
  files = _FILE_IN_ERROR.findall(text)
  where = files[-1] if files else str(getattr(err, 'filename', None) or path / item)
  if not files and item in _JSON_ITEMS and (path / item).is_dir():
    # The JSON handler keeps one data file beside its commit marker: name it.
    data = [f for f in (path / item).iterdir() if f.name != 'commit_success.txt']
    where = str(data[0]) if len(data) == 1 else where
  code = text.split(':', 1)[0]
  if code in _STORE_CODES:
    reason = f'{_STORE_CODES[code]}, {code}'
  else:
    reason = f'{type(err).__name__}: {text}' if text else type(err).__name__
    reason = reason if len(reason) <= 200 else reason[:197] + '...'
  return UserError(f"The {kind} at '{path}' is damaged: '{where}' could not be read ({reason}); delete the "
                   'directory and save it again.')


def _check_present(path, items, kind: str) -> epath.Path:
  """Raises a UserError unless a complete checkpoint with `items` is at `path`."""
  path = _epath(path)
  if not path.is_dir():
    what = 'the path is a file, not a directory' if path.exists() else 'the directory does not exist'
    raise UserError(f"No {kind} at '{path}': {what}; check the path (or run the step that writes it).")
  missing = [item for item in items if not (path / item).is_dir()]
  if len(missing) == len(items) and not (path / '_CHECKPOINT_METADATA').exists():
    # Nothing of a checkpoint here: someone else's directory, never ours to advise deleting.
    raise UserError(f"'{path}' is not a {kind}: it holds none of a {kind}'s parts ({', '.join(items)}); pass the "
                    f"directory of a {kind}.")
  if missing:
    raise UserError(f"The {kind} at '{path}' is incomplete or damaged: missing "
                    f"{', '.join(repr(str(path / m)) for m in missing)}; delete the directory and save it again.")
  if not _is_complete(path, items):
    raise UserError(f"The {kind} at '{path}' was never finalized (an interrupted save); delete it and save "
                    'it again.')
  return path


def _restore_args(checkpointer, path: epath.Path, items) -> dict:
  """{item: restore args}: arrays come back as host numpy with their saved dtypes, JSON as Python values."""
  args = {item: ocp.args.JsonRestore() for item in items if item in _JSON_ITEMS}
  arrays = [item for item in items if item not in _JSON_ITEMS]
  if arrays:
    # One metadata read covers every item (Orbax opens each array to read its shape).
    metadata = checkpointer.metadata(path).item_metadata
    for item in arrays:
      meta = metadata[item]
      if meta is None:
        raise FileNotFoundError(f'no readable array metadata in {path / item}')
      meta = getattr(meta, 'tree', meta)
      # A numpy target makes Orbax return numpy (no device placement), whatever sharding was saved.
      args[item] = ocp.args.StandardRestore(jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta))
  return args


def _restore(checkpointer, path: epath.Path, items, kind: str) -> dict:
  """{item: value} of `items`, read in one restore (each restore call has a fixed cost of tens of ms)."""
  try:
    restored = checkpointer.restore(path, args=ocp.args.Composite(**_restore_args(checkpointer, path, items)))
  except Exception as err:  # Orbax/tensorstore raise many types; the user only needs the file and reason.
    if len(items) > 1:  # read item by item to name the one that is damaged
      for item in items:
        _restore(checkpointer, path, (item,), kind)
    raise _damage(path, items[0], kind, err) from err
  return {item: restored[item] for item in items}


def _numpy_tree(tree: Any) -> Any:
  """A plain nested dict of numpy arrays (Orbax may hand back its own mapping types)."""
  if hasattr(tree, 'items'):
    return {k: _numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree)


def save_ticket(path, *, masks, rewind_params, trained_params, metrics, sparsity, overwrite=False) -> None:
  """Saves one ticket as an Orbax directory; refuses to replace a complete ticket unless overwrite=True."""
  items = {
      # Leaves stay as given (numpy, or jax arrays that may be sharded across processes).
      'masks': ocp.args.StandardSave(jax.tree.map(lambda m: m if m.dtype == bool else m.astype(bool), masks)),
      'rewind_params': ocp.args.StandardSave(rewind_params),
      'trained_params': ocp.args.StandardSave(trained_params),
      'metrics': ocp.args.JsonSave(_to_json(metrics)),
      'sparsity': ocp.args.JsonSave(_to_json(sparsity)),
  }
  _save(path, items, 'ticket', overwrite)


def ticket_exists(path) -> bool:
  """True when a complete (finalized, every item present) ticket is at `path`."""
  return _is_complete(_epath(path), _ARRAY_ITEMS + _JSON_ITEMS)


def load_ticket(path) -> Ticket:
  """Loads a ticket saved by `save_ticket`; arrays come back as numpy, masks as bool."""
  where = _check_present(path, _ARRAY_ITEMS + _JSON_ITEMS, 'ticket')
  checkpointer = _checkpointer(_ARRAY_ITEMS + _JSON_ITEMS, local=True)
  loaded = _restore(checkpointer, where, _ARRAY_ITEMS + _JSON_ITEMS, 'ticket')
  for item in _ARRAY_ITEMS:
    loaded[item] = _numpy_tree(loaded[item])
  return Ticket(path=str(where), **loaded)


def load_ticket_metadata(path) -> dict:
  """Only a ticket's JSON items ({'metrics': ..., 'sparsity': ...}), without reading its arrays."""
  where = _check_present(path, _ARRAY_ITEMS + _JSON_ITEMS, 'ticket')
  checkpointer = _checkpointer(_JSON_ITEMS, local=True)
  return _restore(checkpointer, where, _JSON_ITEMS, 'ticket')


def save_params(path, params, *, overwrite=False) -> None:
  """Saves a params tree alone (theta_0, theta_k, VGG weights) as an Orbax directory, atomically."""
  _save(path, {_PARAMS_ITEM: ocp.args.StandardSave(params)}, 'params checkpoint', overwrite)


def params_exist(path) -> bool:
  """True when a complete params checkpoint is at `path`."""
  return _is_complete(_epath(path), (_PARAMS_ITEM,))


def load_params(path) -> dict:
  """Loads a params tree saved by `save_params` as numpy arrays with their saved dtypes."""
  where = _check_present(path, (_PARAMS_ITEM,), 'params checkpoint')
  checkpointer = _checkpointer((_PARAMS_ITEM,), local=True)
  return _numpy_tree(_restore(checkpointer, where, (_PARAMS_ITEM,), 'params checkpoint')[_PARAMS_ITEM])


def save_json(path, obj) -> None:
  """Writes `obj` as JSON atomically (storage.write_atomically), on disk or an object store."""
  text = json.dumps(_to_json(obj), indent=2) + '\n'
  storage.write_atomically(path, text)


def load_json(path) -> Any:
  """Reads a JSON file; a missing or broken file gives a UserError naming it."""
  path = os.fspath(path)
  try:
    return json.loads(storage.read_text(path))
  except FileNotFoundError:
    raise UserError(f"No JSON file at '{path}'; check the path (or run the step that writes it).") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
    raise UserError(f"'{path}' is not readable JSON ({err}); delete it and write it again.") from None


# ----------------------------------------------------------------------------- train-state checkpoints


@jax.jit
def _flat_rows(tree) -> dict:
  """{dtype name: (slots, width) array}: each slot's leaves (leading axis = slot) laid end to end in tree order.

  Orbax's cost is per array, and a pack's train state is many small arrays: a few rows save in a fraction of the
  time. Jitted, so the rows keep the slots' sharding and each process writes its own runs."""
  rows = {}
  for leaf in jax.tree.leaves(tree):
    rows.setdefault(jnp.dtype(leaf.dtype).name, []).append(jnp.reshape(leaf, (leaf.shape[0], -1)))
  return {name: jnp.concatenate(parts, axis=1) for name, parts in rows.items()}


def _row_widths(template) -> dict:
  """{dtype name: width} of `_flat_rows` for a tree of one slot's leaves (no slot axis)."""
  widths = {}
  for leaf in jax.tree.leaves(template):
    name = np.asarray(leaf).dtype.name
    widths[name] = widths.get(name, 0) + int(np.size(leaf))
  return widths


def _split_rows(rows: dict, template) -> Any:
  """The inverse of `_flat_rows` on the host: a tree like `template` (one slot's leaves), each leaf with a leading
  slot axis."""
  rows = {name: np.asarray(r) for name, r in rows.items()}
  used = dict.fromkeys(rows, 0)

  def take(leaf):
    leaf = np.asarray(leaf)
    name, start = leaf.dtype.name, used[leaf.dtype.name]
    used[name] += leaf.size
    return rows[name][:, start:start + leaf.size].reshape((-1,) + leaf.shape)

  return jax.tree.map(take, template)


class TrainCheckpoints:
  """The running round's train state in `<workdir>/state`: an Orbax CheckpointManager keyed by step.

  Each step holds a pack of runs trained side by side (one run without packing) in three items: 'state' (the
  TrainState's fields), 'masks' (the runs' masks, to check that a resumed run prunes the same weights) and 'meta'
  (JSON: pack_size, the state's row widths and, per slot, the run's branch, round, replicate, step and data iterator
  state). 'state' and 'masks' are stored as rows (`_flat_rows`): one array per dtype, row i the leaves of slot i
  laid end to end in tree order. The directory only ever holds the current pack: a pack that starts afresh deletes
  what an earlier one left, so step keys always grow. Orbax writes each step into a temporary directory and renames
  it when complete, so a crash never leaves a half checkpoint under a step's name.
  """

  def __init__(self, directory, *, keep: int, async_save: bool, log=print):
    self.directory = _epath(directory)
    self.log = log
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    handlers = {'state': ocp.StandardCheckpointHandler(), 'masks': ocp.StandardCheckpointHandler(),
                'meta': ocp.JsonCheckpointHandler()}
    if jax.process_index() == 0:  # what killed runs left half-written (the workdir lock excludes a live writer)
      for leftover in self.directory.glob(f'*{_TMP_SUFFIX}*') if self.directory.exists() else ():
        leftover.rmtree(missing_ok=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: dict, masks, meta: dict) -> None:
    """Starts writing step `step` (in the background when async); waits for the previous write first."""
    state, masks = _flat_rows(state), _flat_rows(masks)
    widths = {item: {name: int(rows.shape[1]) for name, rows in tree.items()}
              for item, tree in (('state', state), ('masks', masks))}
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), masks=ocp.args.StandardSave(masks),
                              meta=ocp.args.JsonSave(_to_json(dict(meta, step=int(step), widths=widths))))
    if not self.manager.save(int(step), args=args, force=True):
      raise RuntimeError(f'Orbax refused to save step {step} in {self.directory}')

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def meta(self, step: int) -> dict:
    return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta'])

  def restore_runs(self, names: list[dict], state_template: dict, masks: list) -> list[dict | None]:
    """Each named run's state (host numpy, from its slot of the newest readable checkpoint holding it, with the
    slot's meta entry under 'run'), or None.

    A checkpoint holds a pack of runs (meta 'runs' names them in slot order); a run is found by its name
    (branch, round, replicate), so a resumed run may be packed differently. A damaged checkpoint (truncated,
    half-written, unreadable) is reported, deleted and the one before it tried. A slot whose masks differ from
    the run's (a changed config) is not used.
    """
    self.wait()
    found: list[dict | None] = [None] * len(names)
    key = lambda name: (name.get('branch'), name.get('round'), name.get('replicate', 0))
    wanted = {key(name): i for i, name in enumerate(names)}
    for step in reversed(self.steps()):
      try:
        meta = self.meta(step)
        runs = meta.get('runs', [])
        slots = {wanted[key(run)]: slot for slot, run in enumerate(runs) if key(run) in wanted}
        if not slots:
          break  # the newest checkpoint is another pack's: nothing older can be ours
        size = int(meta['pack_size'])
        widths = {'state': _row_widths(state_template), 'masks': _row_widths(masks[0])}
        if meta.get('widths') != widths:
          self.log(f"WARNING: the checkpoint '{self.directory / str(step)}' holds a state of other shapes than "
                   'these runs have (a changed config, or one written by an older version); starting afresh.')
          break
        target = lambda item: {name: np.zeros((size, w), jnp.dtype(name)) for name, w in widths[item].items()}
        got = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target('state')), masks=ocp.args.StandardRestore(target('masks'))))
      except Exception as err:  # Orbax/tensorstore raise many types; any of them means this step is unusable.
        reason = str(err).split(' [tensorstore_spec', 1)[0].strip().splitlines()
        reason = f'{type(err).__name__}: {reason[0][:200]}' if reason else type(err).__name__
        self.log(f"WARNING: the checkpoint '{self.directory / str(step)}' is damaged ({reason}); deleting it and "
                 'falling back to the previous one.')
        self._delete(step)
        continue
      saved_masks = _split_rows(got['masks'], masks[0])
      saved_state = _split_rows(got['state'], state_template)
      for i, slot in slots.items():
        same = all(np.array_equal(a[slot], b) for a, b in zip(jax.tree.leaves(saved_masks),
                                                              jax.tree.leaves(masks[i])))
        if not same:
          self.log(f"WARNING: the checkpoint '{self.directory / str(step)}' holds other masks for "
                   f"{names[i]} than it has now (a changed config); starting that run afresh.")
          continue
        found[i] = jax.tree.map(lambda x, slot=slot: x[slot], dict(saved_state))
        found[i]['run'] = runs[slot]  # what the slot's meta says of the run (step, data position, early bird)
      break
    return found

  def _delete(self, step: int) -> None:
    try:
      self.manager.delete(step)
    except Exception:  # pylint: disable=broad-except  (a directory Orbax cannot parse: remove it by hand)
      if jax.process_index() == 0:
        (self.directory / str(step)).rmtree(missing_ok=True)
      self.manager.reload()

  def clear(self) -> None:
    """Deletes every step (a round that starts afresh, or one whose ticket is saved)."""
    self.wait()
    for step in self.steps():
      self._delete(step)

  def latest(self) -> str:
    """Where the newest checkpoint is, in words, for messages."""
    steps = self.steps()
    return f"step {steps[-1]} in '{self.directory}'" if steps else f"none yet in '{self.directory}'"

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
