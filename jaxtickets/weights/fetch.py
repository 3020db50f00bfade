"""python -m jaxtickets.weights fetch NAME: downloads each released file of NAME (or takes it from --from), checks its
SHA-256 against the table in releases.py (trusting a hash on first use where none is published), and ports it.

  python -m jaxtickets.weights fetch adain [--out=weights] [--from=FILE ...] [--allow_unverified] [--pins=FILE]
"""

import argparse
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from jaxtickets import errors, storage
from jaxtickets.errors import UserError
from jaxtickets.weights import releases


def _by_hand(entry: releases.Released) -> str:
  return f'download it by hand from {entry.page} and pass --from=FILE'


def _open(url: str, entry: releases.Released):
  try:
    return urllib.request.urlopen(url, timeout=releases._TIMEOUT_S)  # noqa: S310  (https URLs from the table)
  except urllib.error.HTTPError as err:
    why = f'HTTP {err.code} {err.reason}'
  except (urllib.error.URLError, OSError) as err:
    reason = getattr(err, 'reason', err)
    why = f'no connection ({reason})'
  raise UserError(f'Downloading {entry.title} from {url} failed ({why}): {_by_hand(entry)}.')


def _download(url: str, dest: str, entry: releases.Released, log) -> str:
  """`url` saved at `dest` (through a partial file: an interrupted download leaves nothing at `dest`)."""
  if entry.yandex:  # the public link's API answer names the address of the file itself
    with _open(releases._YANDEX + urllib.parse.quote(url, safe=''), entry) as resp:
      try:
        url = json.load(resp)['href']
      except (ValueError, KeyError, TypeError):
        raise UserError(f'Yandex.Disk gave no download address for {entry.title} ({url}): '
                        f'{_by_hand(entry)}.') from None
  log(f'Downloading {entry.title} from {url}')
  storage.makedirs(os.path.dirname(dest))
  def stream(part: str) -> None:
    with _open(url, entry) as resp, open(part, 'wb') as f:
      kind = resp.headers.get('Content-Type', '')
      head = resp.read(1 << 16)
      if kind.startswith('text/html') or head.lstrip()[:1] == b'<':
        raise UserError(f'{url} served a web page instead of {entry.title} (a sign-in, quota or warning page): '
                        f'{_by_hand(entry)}.')
      f.write(head)
      shutil.copyfileobj(resp, f, 1 << 20)

  try:
    storage.write_atomically(dest, stream)  # a cut download leaves nothing under dest's name
  except OSError as err:
    raise UserError(f'Downloading {entry.title} from {url} failed ({err}): {_by_hand(entry)}.') from None
  return dest


def _from_archive(archive: str, member: str, dest: str) -> str | None:
  """The archive's file named `member` (in any folder) extracted to `dest`, or None when it has none."""
  with zipfile.ZipFile(archive) as z:
    names = [n for n in z.namelist() if os.path.basename(n) == member]
    if not names:
      return None
    storage.makedirs(os.path.dirname(dest))
    with z.open(names[0]) as src, open(dest, 'wb') as out:
      shutil.copyfileobj(src, out, 1 << 20)
  return dest


def _is_archive(path: str) -> bool:
  """A zip archive of release files (a PyTorch checkpoint is a zip too, holding a data.pkl)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return not any(n.endswith('data.pkl') for n in z.namelist())


def _downloaded(entry: releases.Released, log) -> tuple[str, str]:
  """(local path, source URL) of a released file, from the download cache or the network."""
  root = os.path.join(releases.cache_dir(), 'downloads')
  dest = os.path.join(root, entry.key)
  if os.path.isfile(dest):
    return dest, entry.url
  if not entry.member:
    return _download(entry.url, dest, entry, log), entry.url
  archive = os.path.join(root, entry.key.split('/')[0], 'archive.zip')
  if not os.path.isfile(archive):
    _download(entry.url, archive, entry, log)
  if not zipfile.is_zipfile(archive):
    os.remove(archive)
    raise UserError(f'{entry.url} did not give a zip archive holding {entry.member}: {_by_hand(entry)}.')
  if _from_archive(archive, entry.member, dest) is None:
    raise UserError(f'The archive from {entry.url} holds no {entry.member}: {_by_hand(entry)}.')
  return dest, entry.url


def _match_from(sources: list[str], needed: list[str], pins: dict[str, str], extract_to: str) -> dict[str, str]:
  """{file key: local path} for the --from paths: a zip archive or a folder gives the files named as released; a
  plain file goes where its hash (published or pinned) or its name puts it, else into the one slot left."""
  from jaxtickets.weights import files as weights  # pylint: disable=import-outside-toplevel
  found: dict[str, str] = {}
  loose = []
  for src in sources:
    if not os.path.exists(src):
      raise UserError(f"--from='{src}' does not exist: pass a downloaded release file, its zip archive or a folder "
                      'holding them.')
    if os.path.isdir(src):
      for root, _, names in os.walk(src):
        for key in needed:
          if key not in found and releases.FILES[key].name in names:
            found[key] = os.path.join(root, releases.FILES[key].name)
    elif _is_archive(src):
      for key in needed:
        got = None if key in found else _from_archive(src, releases.FILES[key].name, os.path.join(extract_to, key))
        if got:
          found[key] = got
    else:
      loose.append(src)
  for src in loose:
    sha = weights.file_sha256(src)
    entry, how = releases.identify(sha, pins)
    if entry is not None and entry.key not in needed:
      names = ', '.join(releases.FILES[k].name for k in needed)
      raise UserError(f"--from='{src}' is {entry.title} (SHA-256 {sha[:12]}..., {how}), not one of the files "
                      f'this release needs ({names}): pass those.')
    key = entry.key if entry is not None else next(
        (k for k in needed if k not in found and releases.FILES[k].name == os.path.basename(src)), None)
    if key is None:
      left = [k for k in needed if k not in found]
      key = left[0] if len(left) == 1 and len(loose) == 1 else None
    if key is None:
      names = ', '.join(releases.FILES[k].name for k in needed)
      raise UserError(f"--from='{src}' is none of {names} by hash or by name: rename it as released, or pass a "
                      'folder or the zip archive holding them.')
    found[key] = src
  return found


# ------------------------------------------------------------------------------------------------------------
# fetch


def verify(key: str, path: str, *, pins_file: str, allow_unverified: bool, log) -> str:
  """Checks a local copy of released file `key`; returns how it is verified ('published', 'pinned', 'unverified:
  first use' or 'unverified: --allow_unverified'). A wrong hash is refused (UserError) unless `allow_unverified`."""
  from jaxtickets.weights import files as weights  # pylint: disable=import-outside-toplevel
  entry, pins = releases.FILES[key], releases.load_pins(pins_file)
  got = weights.file_sha256(path)
  want, how = releases.expected(key, pins)
  if want == got:
    return how
  other, known = releases.identify(got, pins)
  if other is not None:  # another release's file: never the right one, whatever the flags
    raise UserError(f"'{path}' is {other.title} (SHA-256 {got[:12]}..., {known}), not {entry.title}: pass "
                    f'{entry.name} of the {key.split("/")[0]} release.')
  if want:
    where = 'published in jaxtickets/weights/releases.py' if how == releases.PUBLISHED else f'pinned in {pins_file}'
    if not allow_unverified:
      raise UserError(f"'{path}' has SHA-256 {got}, not the {want} of {entry.title} ({where}): download it again, "
                      'or pass --allow_unverified to port it anyway.')
    log(f'WARNING: {entry.title} at {path} has SHA-256 {got}, not the {want} {where}; porting it anyway '
        '(--allow_unverified), recorded as unverified.')
    return 'unverified: --allow_unverified'
  releases.save_pin(key, got, pins_file)
  log(f'WARNING: {entry.title} has no published SHA-256, so this file is UNVERIFIED: recorded its SHA-256 {got} in '
      f'{pins_file} (trust on first use); later fetches must match it.')
  return 'unverified: first use'


def _need_torch(paths) -> None:
  if not any(p.endswith(('.pth', '.pt')) for p in paths):
    return
  try:
    import torch  # pylint: disable=import-outside-toplevel,unused-import  # noqa: F401
  except ImportError:
    raise UserError('Porting the released .pth files needs PyTorch: pip install "jaxtickets[port]" (the `port` '
                    'extra), then fetch again.') from None


def fetch(name: str, *, out: str, sources=(), allow_unverified: bool = False, overwrite: bool = False, log=print):
  """Gets, verifies and ports the released files of `name` (a model, or 'vgg') into out/<name>, with the pin file
  `releases.pins_path()`; returns the weights.Ported written."""
  from jaxtickets.weights import files as weights, port  # pylint: disable=import-outside-toplevel
  if name not in releases.MODELS:
    raise UserError(f"Unknown release {name!r}: choose one of {', '.join(releases.MODELS)}.")
  pins_file = releases.pins_path()
  dest = os.path.join(out, name)
  if weights.is_ported(dest) and not overwrite:
    raise UserError(f"'{dest}' already holds ported weights: pass --overwrite to replace them or choose another "
                    '--out.')
  needed = list(dict.fromkeys(k for _, k in releases.MODELS[name]))
  _need_torch([releases.FILES[k].name for k in needed])
  local = _match_from(list(sources), needed, releases.load_pins(pins_file), os.path.join(releases.cache_dir(), 'from'))
  origin = {k: os.path.abspath(p) for k, p in local.items()}
  for key in needed:
    if key not in local:
      local[key], origin[key] = _downloaded(releases.FILES[key], log)
  status = {k: verify(k, local[k], pins_file=pins_file, allow_unverified=allow_unverified, log=log) for k in needed}
  files = {role: [local[k] for r, k in releases.MODELS[name] if r == role] for role in ('vgg', 'decoder', 'transform')}
  model = None if name == 'vgg' else name
  ported = port.convert(model, vgg=files['vgg'][0], decoder=(files['decoder'] or [None])[0],
                        transforms=files['transform'])
  by_path = {os.path.abspath(local[k]): k for k in needed}
  for info in [ported.sources['vgg'], *ported.sources.get('decoder', []), *ported.sources.get('transform', [])]:
    key = by_path[info['path']]
    info.update(release=releases.FILES[key].title, source=origin[key], verified=status[key])
  weights.save_ported(ported, dest, overwrite=overwrite)
  return ported


def main(argv: list[str]) -> int:
  """python -m jaxtickets.weights fetch NAME ...: 0 when ported; exits 2 on a usage mistake or a refused file."""
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # numpy work and a checkpoint write: leave accelerators free
  parser = argparse.ArgumentParser(prog='python -m jaxtickets.weights', description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  f = sub.add_parser('fetch', help='download, verify and port released weights')
  f.add_argument('name', choices=list(releases.MODELS), help="a model, or 'vgg' for the VGG encoder alone")
  f.add_argument('--out', default='weights', help='writes OUT/NAME (default: weights)')
  f.add_argument('--from', dest='sources', action='append', default=[], metavar='FILE',
                 help='a release file (or its zip archive, or a folder) downloaded by hand; repeat for several')
  f.add_argument('--allow_unverified', action='store_true',
                 help="port a file whose SHA-256 is not the released one's (recorded as unverified)")
  f.add_argument('--pins', default=None, help=f'the pin file of hashes (default: ${releases.PINS_ENV} or {releases.pins_path()})')
  f.add_argument('--overwrite', action='store_true', help='replace weights already ported to OUT/NAME')
  args = parser.parse_args(argv)
  if args.pins:  # the one pin file of this process: fetch's checks and the port's recognition read it
    os.environ[releases.PINS_ENV] = args.pins
  # A refused or missing file is the caller's to fix: the runner exits 2 with its sentence, as for a bad flag.
  ported = errors.run_command(lambda: fetch(args.name, out=args.out, sources=args.sources,
                                            allow_unverified=args.allow_unverified, overwrite=args.overwrite),
                              'jaxtickets.weights')
  for note in ported.notes:
    print(note if note.startswith('WARNING') else f'note: {note}', file=sys.stderr)
  dest = os.path.join(args.out, args.name)
  print(f'Ported {args.name} to {dest}: use --config.model.vgg_weights={dest}'
        + (f' --config.model.init_from={dest}' if ported.params is not None else ''))
  return 0
