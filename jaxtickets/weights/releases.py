"""Released upstream weights: where each file lives, the SHA-256 it must have, and the pins of hashes trusted on first
use. The `fetch` command that downloads, verifies and ports them is jaxtickets/weights/fetch.py.

FILES is the one table of released files: URL, how messages name the file, and its published SHA-256. No upstream
repository publishes a checksum for its weights, so every `sha256` is empty and the hashes are trusted on first use:
the first fetch records the hash it computed in the pin file (PINS_ENV, default ~/.cache/jaxtickets/
weight_pins.json) and says plainly that the file is unverified; later fetches, ports and runs compare with it. A user
pins a hash by writing it into that JSON file ({"adain/decoder.pth": "<sha256>"}) or into FILES.

Every hash known (published or pinned) also names a file wherever it turns up: port.convert refuses a file that is
another model's release (AdaIN's decoder given as SANet's has the same shapes, but not the same hash).
"""

import dataclasses
import json
import os

from jaxtickets import storage
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
  path = path or pins_path()
  pins = load_pins(path)
  pins[key] = sha256
  storage.write_atomically(path, json.dumps(pins, indent=1, sort_keys=True) + '\n')


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
