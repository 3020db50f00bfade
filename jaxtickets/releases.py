"""Released upstream weights: where each file lives, the SHA-256 it must have, and the `fetch` command that
downloads, verifies and ports them.

  python -m jaxtickets.weights fetch adain [--out=weights] [--from=FILE ...] [--allow_unverified] [--pins=FILE]

FILES is the one table of released files: URL, how messages name the file, and its published SHA-256. No upstream
repository publishes a checksum for its weights, so every `sha256` is empty and the hashes are trusted on first use:
the first fetch records the hash it computed in the pin file (PINS_ENV, default ~/.cache/jaxtickets/
weight_pins.json) and says plainly that the file is unverified; later fetches, ports and runs compare with it. A user
pins a hash by writing it into that JSON file ({"adain/decoder.pth": "<sha256>"}) or into FILES.

Every hash known (published or pinned) also names a file wherever it turns up: port.convert refuses a file that is
another model's release (AdaIN's decoder given as SANet's has the same shapes, but not the same hash).
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
import zipfile

from jaxtickets.errors import UserError

PINS_ENV = 'JAXTICKETS_WEIGHT_PINS'  # a JSON file of {file key: sha256}
CACHE_ENV = 'JAXTICKETS_CACHE'  # downloads go to $JAXTICKETS_CACHE/downloads
_TIMEOUT_S = 60
_ADAIN = 'https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0'
_MCCNET = 'https://github.com/diyiiyiii/MCCNet/raw/main'
# Yandex.Disk public links resolve to a download address through Yandex's public API.
_YANDEX = 'https://cloud-api.yandex.net/v1/disk/public/resources/download?public_key='


def _drive(file_id: str) -> str:
  """The direct download address of a public Google Drive file (confirm=t skips the large-file warning page)."""
  return f'https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t'


@dataclasses.dataclass(frozen=True)
class Released:
  """One released file. `key` is '<model>/<file name>' (the pin file's name for it)."""
  key: str
  title: str  # how messages name it: 'AdaIN decoder.pth, release v0.0.0'
  url: str  # the file, or the zip archive holding it (then `member` is its name there)
  page: str  # where a person downloads it by hand
  member: str = ''
  sha256: str = ''  # published SHA-256; '' = none published (trust on first use)
  yandex: bool = False  # `url` is a Yandex.Disk public link, resolved through Yandex's API

  @property
  def name(self) -> str:
    return self.key.split('/', 1)[1]


def _files(*entries: Released) -> dict[str, Released]:
  return {e.key: e for e in entries}


_LST_ZIP = _drive('1H9T5rfXGlGCUh04DGkpkMFbVnmscJAbs')  # models.zip (LinearStyleTransfer README)
_MANET_ZIP = _drive('1JaFfo6VB5NG0y69YfmB6WWjODQNdymWt')  # decoder + MA module (MANet README)
_ADAATTN_ZIP = _drive('1XvpD1eI4JeCBIaW5uwMT6ojF_qlzM_lo')  # AdaAttN_model.zip (AdaAttN README)
_LST_PAGE = 'https://github.com/sunshineatnoon/LinearStyleTransfer (models.zip on Google Drive)'
_MANET_PAGE = 'https://github.com/diyiiyiii/Arbitrary-Style-Transfer-via-Multi-Adaptation-Network (Google Drive)'
_ADAATTN_PAGE = 'https://github.com/Huage001/AdaAttN (AdaAttN_model.zip on Google Drive)'
_SANET_PAGE = 'https://github.com/GlebSBrykin/SANET (Yandex.Disk)'

# The one table. SANet, MANet, MCCNet and AdaAttN load the vgg_normalised.pth that pytorch-AdaIN released (each
# re-hosts it), so they share its entry. The archives' folder layout is not published: members match by file name.
FILES = _files(
    Released('adain/vgg_normalised.pth', 'AdaIN vgg_normalised.pth, release v0.0.0',
             f'{_ADAIN}/vgg_normalised.pth', 'https://github.com/naoto0804/pytorch-AdaIN/releases/tag/v0.0.0'),
    Released('adain/decoder.pth', 'AdaIN decoder.pth, release v0.0.0', f'{_ADAIN}/decoder.pth',
             'https://github.com/naoto0804/pytorch-AdaIN/releases/tag/v0.0.0'),
    Released('sanet/decoder_iter_500000.pth', 'SANet decoder_iter_500000.pth (Yandex.Disk)',
             'https://yadi.sk/d/xsZ7j6FhK1dmfQ', _SANET_PAGE, yandex=True),
    Released('sanet/transformer_iter_500000.pth', 'SANet transformer_iter_500000.pth (Yandex.Disk)',
             'https://yadi.sk/d/GhQe3g_iRzLKMQ', _SANET_PAGE, yandex=True),
    Released('lst/vgg_r51.pth', 'LST vgg_r51.pth, models.zip', _LST_ZIP, _LST_PAGE, member='vgg_r51.pth'),
    Released('lst/dec_r41.pth', 'LST dec_r41.pth, models.zip', _LST_ZIP, _LST_PAGE, member='dec_r41.pth'),
    Released('lst/r41.pth', 'LST r41.pth, models.zip', _LST_ZIP, _LST_PAGE, member='r41.pth'),
    Released('manet/decoder_iter_160000.pth', 'MANet decoder_iter_160000.pth (Google Drive)', _MANET_ZIP,
             _MANET_PAGE, member='decoder_iter_160000.pth'),
    Released('manet/ma_module_iter_160000.pth', 'MANet ma_module_iter_160000.pth (Google Drive)', _MANET_ZIP,
             _MANET_PAGE, member='ma_module_iter_160000.pth'),
    Released('adaattn/latest_net_decoder.pth', 'AdaAttN latest_net_decoder.pth, AdaAttN_model.zip', _ADAATTN_ZIP,
             _ADAATTN_PAGE, member='latest_net_decoder.pth'),
    Released('adaattn/latest_net_transformer.pth', 'AdaAttN latest_net_transformer.pth, AdaAttN_model.zip',
             _ADAATTN_ZIP, _ADAATTN_PAGE, member='latest_net_transformer.pth'),
    Released('adaattn/latest_net_adaattn_3.pth', 'AdaAttN latest_net_adaattn_3.pth, AdaAttN_model.zip',
             _ADAATTN_ZIP, _ADAATTN_PAGE, member='latest_net_adaattn_3.pth'),
    Released('mccnet/decoder_iter_160000.pth', 'MCCNet decoder_iter_160000.pth (repository main)',
             f'{_MCCNET}/decoder_iter_160000.pth', 'https://github.com/diyiiyiii/MCCNet'),
    Released('mccnet/mcc_module_iter_160000.pth', 'MCCNet mcc_module_iter_160000.pth (repository main)',
             f'{_MCCNET}/mcc_module_iter_160000.pth', 'https://github.com/diyiiyiii/MCCNet'),
)

_VGG = 'adain/vgg_normalised.pth'
# What `fetch NAME` ports: (role, file key) in port.convert's order; 'vgg' alone is a VGG-only port.
MODELS = {
    'vgg': (('vgg', _VGG),),
    'adain': (('vgg', _VGG), ('decoder', 'adain/decoder.pth')),
    'sanet': (('vgg', _VGG), ('decoder', 'sanet/decoder_iter_500000.pth'),
              ('transform', 'sanet/transformer_iter_500000.pth')),
    'lst': (('vgg', 'lst/vgg_r51.pth'), ('decoder', 'lst/dec_r41.pth'), ('transform', 'lst/r41.pth')),
    'manet': (('vgg', _VGG), ('decoder', 'manet/decoder_iter_160000.pth'),
              ('transform', 'manet/ma_module_iter_160000.pth')),
    'adaattn': (('vgg', _VGG), ('decoder', 'adaattn/latest_net_decoder.pth'),
                ('transform', 'adaattn/latest_net_transformer.pth'), ('transform', 'adaattn/latest_net_adaattn_3.pth')),
    'mccnet': (('vgg', _VGG), ('decoder', 'mccnet/decoder_iter_160000.pth'),
               ('transform', 'mccnet/mcc_module_iter_160000.pth')),
}

PUBLISHED, PINNED = 'published', 'pinned'  # how a known hash is known


# ------------------------------------------------------------------------------------------------------------
# Pins: the hashes recorded on first use (or written by the user)


def cache_dir() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'jaxtickets')


def pins_path() -> str:
  return os.environ.get(PINS_ENV) or os.path.join(cache_dir(), 'weight_pins.json')


def load_pins(path: str | None = None) -> dict[str, str]:
  path = path or pins_path()
  if not os.path.isfile(path):
    return {}
  try:
    with open(path) as f:
      pins = json.load(f)
  except (OSError, ValueError) as err:
    raise UserError(f"The pin file '{path}' is not readable JSON ({err}): fix it or delete it (the next fetch "
                    'records the hashes again).') from None
  if not isinstance(pins, dict):
    raise UserError(f"The pin file '{path}' is not a JSON object of {{file: sha256}}: fix it or delete it.")
  return {str(k): str(v).lower() for k, v in pins.items()}


def save_pin(key: str, sha256: str, path: str | None = None) -> None:
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  path = path or pins_path()
  pins = load_pins(path)
  pins[key] = sha256

  def write(tmp):
    with open(tmp, 'w') as f:
      json.dump(pins, f, indent=1, sort_keys=True)
      f.write('\n')
  weights.write_atomically(path, write)


def expected(key: str, pins: dict[str, str]) -> tuple[str, str]:
  """(sha256, PUBLISHED | PINNED) of a released file, ('', '') when none is known."""
  if FILES[key].sha256:
    return FILES[key].sha256.lower(), PUBLISHED
  if pins.get(key):
    return pins[key], PINNED
  return '', ''


def identify(sha256: str, pins: dict[str, str] | None = None) -> tuple[Released | None, str]:
  """(the released file with this hash, PUBLISHED | PINNED), or (None, '')."""
  pins = load_pins() if pins is None else pins
  for key in FILES:
    want, how = expected(key, pins)
    if want and want == sha256.lower():
      return FILES[key], how
  return None, ''


def _slots(key: str) -> set[tuple[str, str]]:
  return {(model, role) for model, files in MODELS.items() for role, k in files if k == key}


def recognise(path: str, sha256: str, model: str | None, role: str) -> dict:
  """Provenance of a file ported into `role` ('vgg', 'decoder', 'transform') of `model` (None: a VGG-only port):
  {'release', 'verified'} when its hash is a released file's, {} when unknown. A released file of another slot
  (AdaIN's decoder given as SANet's: the same shapes) is refused."""
  found, how = identify(sha256)
  if found is None:
    return {}
  slots = _slots(found.key)
  fits = any(r == role for _, r in slots) if model is None else (model, role) in slots
  if not fits:
    wanted = [FILES[k].name for r, k in MODELS.get(model or 'vgg', ()) if r == role]
    which = f"{model}'s {role}" + (f" ({', '.join(wanted)})" if wanted else '')
    raise UserError(f"'{path}' is {found.title} (SHA-256 {sha256[:12]}..., {how}), not {which}: pass the "
                    f'{model or "VGG"} release file for that slot.')
  return {'release': found.title, 'verified': how}


# ------------------------------------------------------------------------------------------------------------
# Getting the files


def _by_hand(entry: Released) -> str:
  return f'download it by hand from {entry.page} and pass --from=FILE'


def _open(url: str, entry: Released):
  try:
    return urllib.request.urlopen(url, timeout=_TIMEOUT_S)  # noqa: S310  (https URLs from the table)
  except urllib.error.HTTPError as err:
    why = f'HTTP {err.code} {err.reason}'
  except (urllib.error.URLError, OSError) as err:
    reason = getattr(err, 'reason', err)
    why = f'no connection ({reason})'
  raise UserError(f'Downloading {entry.title} from {url} failed ({why}): {_by_hand(entry)}.')


def _download(url: str, dest: str, entry: Released, log) -> str:
  """`url` saved at `dest` (through a partial file: an interrupted download leaves nothing at `dest`)."""
  if entry.yandex:  # the public link's API answer names the address of the file itself
    with _open(_YANDEX + urllib.parse.quote(url, safe=''), entry) as resp:
      try:
        url = json.load(resp)['href']
      except (ValueError, KeyError, TypeError):
        raise UserError(f'Yandex.Disk gave no download address for {entry.title} ({url}): '
                        f'{_by_hand(entry)}.') from None
  log(f'Downloading {entry.title} from {url}')
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  part = f'{dest}.part-{os.getpid()}'
  try:
    with _open(url, entry) as resp, open(part, 'wb') as f:
      kind = resp.headers.get('Content-Type', '')
      head = resp.read(1 << 16)
      if kind.startswith('text/html') or head.lstrip()[:1] == b'<':
        raise UserError(f'{url} served a web page instead of {entry.title} (a sign-in, quota or warning page): '
                        f'{_by_hand(entry)}.')
      f.write(head)
      shutil.copyfileobj(resp, f, 1 << 20)
    os.replace(part, dest)
  except OSError as err:
    raise UserError(f'Downloading {entry.title} from {url} failed ({err}): {_by_hand(entry)}.') from None
  finally:
    if os.path.exists(part):
      os.remove(part)
  return dest


def _from_archive(archive: str, member: str, dest: str) -> str | None:
  """The archive's file named `member` (in any folder) extracted to `dest`, or None when it has none."""
  with zipfile.ZipFile(archive) as z:
    names = [n for n in z.namelist() if os.path.basename(n) == member]
    if not names:
      return None
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with z.open(names[0]) as src, open(dest, 'wb') as out:
      shutil.copyfileobj(src, out, 1 << 20)
  return dest


def _is_archive(path: str) -> bool:
  """A zip archive of release files (a PyTorch checkpoint is a zip too, holding a data.pkl)."""
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return not any(n.endswith('data.pkl') for n in z.namelist())


def _downloaded(entry: Released, log) -> tuple[str, str]:
  """(local path, source URL) of a released file, from the download cache or the network."""
  root = os.path.join(cache_dir(), 'downloads')
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
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  found: dict[str, str] = {}
  loose = []
  for src in sources:
    if not os.path.exists(src):
      raise UserError(f"--from='{src}' does not exist: pass a downloaded release file, its zip archive or a folder "
                      'holding them.')
    if os.path.isdir(src):
      for root, _, names in os.walk(src):
        for key in needed:
          if key not in found and FILES[key].name in names:
            found[key] = os.path.join(root, FILES[key].name)
    elif _is_archive(src):
      for key in needed:
        got = None if key in found else _from_archive(src, FILES[key].name, os.path.join(extract_to, key))
        if got:
          found[key] = got
    else:
      loose.append(src)
  for src in loose:
    sha = weights.file_sha256(src)
    entry, how = identify(sha, pins)
    if entry is not None and entry.key not in needed:
      names = ', '.join(FILES[k].name for k in needed)
      raise UserError(f"--from='{src}' is {entry.title} (SHA-256 {sha[:12]}..., {how}), not one of the files "
                      f'this release needs ({names}): pass those.')
    key = entry.key if entry is not None else next(
        (k for k in needed if k not in found and FILES[k].name == os.path.basename(src)), None)
    if key is None:
      left = [k for k in needed if k not in found]
      key = left[0] if len(left) == 1 and len(loose) == 1 else None
    if key is None:
      names = ', '.join(FILES[k].name for k in needed)
      raise UserError(f"--from='{src}' is none of {names} by hash or by name: rename it as released, or pass a "
                      'folder or the zip archive holding them.')
    found[key] = src
  return found


# ------------------------------------------------------------------------------------------------------------
# fetch


def verify(key: str, path: str, *, pins_file: str, allow_unverified: bool, log) -> str:
  """Checks a local copy of released file `key`; returns how it is verified ('published', 'pinned', 'unverified:
  first use' or 'unverified: --allow_unverified'). A wrong hash is refused (UserError) unless `allow_unverified`."""
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  entry, pins = FILES[key], load_pins(pins_file)
  got = weights.file_sha256(path)
  want, how = expected(key, pins)
  if want == got:
    return how
  other, known = identify(got, pins)
  if other is not None:  # another release's file: never the right one, whatever the flags
    raise UserError(f"'{path}' is {other.title} (SHA-256 {got[:12]}..., {known}), not {entry.title}: pass "
                    f'{entry.name} of the {key.split("/")[0]} release.')
  if want:
    where = 'published in jaxtickets/releases.py' if how == PUBLISHED else f'pinned in {pins_file}'
    if not allow_unverified:
      raise UserError(f"'{path}' has SHA-256 {got}, not the {want} of {entry.title} ({where}): download it again, "
                      'or pass --allow_unverified to port it anyway.')
    log(f'WARNING: {entry.title} at {path} has SHA-256 {got}, not the {want} {where}; porting it anyway '
        '(--allow_unverified), recorded as unverified.')
    return 'unverified: --allow_unverified'
  save_pin(key, got, pins_file)
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
  `pins_path()`; returns the weights.Ported written."""
  from jaxtickets import port, weights  # pylint: disable=import-outside-toplevel
  if name not in MODELS:
    raise UserError(f"Unknown release {name!r}: choose one of {', '.join(MODELS)}.")
  pins_file = pins_path()
  dest = os.path.join(out, name)
  if weights.is_ported(dest) and not overwrite:
    raise UserError(f"'{dest}' already holds ported weights: pass --overwrite to replace them or choose another "
                    '--out.')
  needed = list(dict.fromkeys(k for _, k in MODELS[name]))
  _need_torch([FILES[k].name for k in needed])
  local = _match_from(list(sources), needed, load_pins(pins_file), os.path.join(cache_dir(), 'from'))
  origin = {k: os.path.abspath(p) for k, p in local.items()}
  for key in needed:
    if key not in local:
      local[key], origin[key] = _downloaded(FILES[key], log)
  status = {k: verify(k, local[k], pins_file=pins_file, allow_unverified=allow_unverified, log=log) for k in needed}
  files = {role: [local[k] for r, k in MODELS[name] if r == role] for role in ('vgg', 'decoder', 'transform')}
  model = None if name == 'vgg' else name
  ported = port.convert(model, vgg=files['vgg'][0], decoder=(files['decoder'] or [None])[0],
                        transforms=files['transform'])
  by_path = {os.path.abspath(local[k]): k for k in needed}
  for info in [ported.sources['vgg'], *ported.sources.get('decoder', []), *ported.sources.get('transform', [])]:
    key = by_path[info['path']]
    info.update(release=FILES[key].title, source=origin[key], verified=status[key])
  weights.save_ported(ported, dest, overwrite=overwrite)
  return ported


def main(argv: list[str]) -> int:
  """python -m jaxtickets.weights fetch NAME ...: exit 0 when ported, 2 on a usage mistake or a refused file."""
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # numpy work and a checkpoint write: leave accelerators free
  parser = argparse.ArgumentParser(prog='python -m jaxtickets.weights', description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  f = sub.add_parser('fetch', help='download, verify and port released weights')
  f.add_argument('name', choices=list(MODELS), help="a model, or 'vgg' for the VGG encoder alone")
  f.add_argument('--out', default='weights', help='writes OUT/NAME (default: weights)')
  f.add_argument('--from', dest='sources', action='append', default=[], metavar='FILE',
                 help='a release file (or its zip archive, or a folder) downloaded by hand; repeat for several')
  f.add_argument('--allow_unverified', action='store_true',
                 help="port a file whose SHA-256 is not the released one's (recorded as unverified)")
  f.add_argument('--pins', default=None, help=f'the pin file of hashes (default: ${PINS_ENV} or {pins_path()})')
  f.add_argument('--overwrite', action='store_true', help='replace weights already ported to OUT/NAME')
  args = parser.parse_args(argv)
  if args.pins:  # the one pin file of this process: fetch's checks and the port's recognition read it
    os.environ[PINS_ENV] = args.pins
  try:
    ported = fetch(args.name, out=args.out, sources=args.sources, allow_unverified=args.allow_unverified,
                   overwrite=args.overwrite)
  except UserError as e:  # a refused or missing file is the caller's to fix: exit 2, as for a bad flag
    print(f'error: {e}', file=sys.stderr)
    return 2
  for note in ported.notes:
    print(note if note.startswith('WARNING') else f'note: {note}', file=sys.stderr)
  dest = os.path.join(args.out, args.name)
  print(f'Ported {args.name} to {dest}: use --config.model.vgg_weights={dest}'
        + (f' --config.model.init_from={dest}' if ported.params is not None else ''))
  return 0
