"""Where files live: a local folder, or an object store (gs://, and any fsspec URL that etils.epath handles).

Every file a run writes or reads outside Orbax goes through here, through etils.epath, the file abstraction
Orbax itself uses, so a workdir, its tickets and reports, and the data folders may be `gs://bucket/...` paths
on a TPU slice that has no shared disk. Paths stay strings (os.path.join/dirname work on URLs on POSIX).

Two promises, kept on both kinds of storage:
- `write_atomically`: a reader sees the old file or the new one, never half of one. On disk: a full temporary
  sibling, then os.replace. An object store has no rename, and needs none: an object upload becomes visible
  whole when it completes, or not at all, so the object is written in place.
- `create_exclusive`: of two writers, exactly one creates the file (the workdir lock). On disk: a full
  temporary file hard-linked to the name, which fails if the name exists. On GCS: an upload with the
  precondition ifGenerationMatch=0 (gcsfs' exclusive mode 'xb'), which the server refuses if the object exists.
"""

import io
import logging
import os
import socket
import tempfile
import uuid

from etils import epath

from jaxtickets.errors import UserError

class _QuietBucketProbe(logging.Filter):
  """Drops gcsfs' warning that it could not ask a bucket whether it is hierarchical (it falls back to the plain
  API, which is all this needs); printed at every filesystem it opens, it would bury the run's own lines."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Could not determine bucket type" not in record.getMessage()


for _name in ("gcsfs", "gcsfs.extended_gcsfs"):
  logging.getLogger(_name).addFilter(_QuietBucketProbe())

# URL schemes and the package that lets fsspec (and so etils.epath) reach them.
_FILESYSTEM_PACKAGES = {"gs": ("gcsfs", "gcs"), "s3": ("s3fs", None), "az": ("adlfs", None)}


def is_url(path) -> bool:
  return "://" in os.fspath(path)


def scheme(path) -> str:
  text = os.fspath(path)
  return text.split("://", 1)[0] if "://" in text else ""


def check_reachable(path, what: str = "path") -> None:
  """A URL whose filesystem package is missing is refused in one sentence, before anything runs."""
  name = scheme(path)
  if not name or name == "file":
    return
  package, extra = _FILESYSTEM_PACKAGES.get(name, (None, None))
  if package is None:
    try:
      import fsspec  # pylint: disable=g-import-not-at-top
      fsspec.get_filesystem_class(name)
      return
    except (ImportError, ValueError) as e:
      raise UserError(f"The {what} '{path}' uses the scheme '{name}://', which fsspec cannot open ({e}): use a "
                      "local path or gs://.") from None
  try:
    __import__(package)
  except ImportError:
    how = f"pip install 'jaxtickets[{extra}]'" if extra else f"pip install {package}"
    raise UserError(f"The {what} '{path}' is on {name}://, which needs {package}: {how}.") from None


def epath_of(path) -> epath.Path:
  """An epath.Path: URLs as they are, local paths made absolute (Orbax wants absolute paths)."""
  text = os.fspath(path)
  return epath.Path(text if is_url(text) else os.path.abspath(text))


def absolute(path) -> str:
  """The path as an absolute string; a URL is already one."""
  text = os.fspath(path)
  return text if is_url(text) else os.path.abspath(text)


def exists(path) -> bool:
  return os.path.exists(path) if not is_url(path) else epath_of(path).exists()


def isdir(path) -> bool:
  return os.path.isdir(path) if not is_url(path) else epath_of(path).is_dir()


def isfile(path) -> bool:
  return os.path.isfile(path) if not is_url(path) else epath_of(path).is_file()


def listdir(path) -> list[str]:
  """The names in a folder ([] when there is none)."""
  if not is_url(path):
    return os.listdir(path) if os.path.isdir(path) else []
  p = epath_of(path)
  return [c.name for c in p.iterdir()] if p.is_dir() else []


def makedirs(path) -> None:
  """A folder and its parents (an object store has no folders: a no-op there); UserError when a file stands in the
  way or the folder cannot be made."""
  if is_url(path):
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as err:
    blocker = os.fspath(path)
    while blocker and not os.path.exists(blocker) and os.path.dirname(blocker) != blocker:
      blocker = os.path.dirname(blocker)
    if os.path.isfile(blocker):
      raise UserError(f"The folder '{path}' cannot be made: '{blocker}' is a file; choose another path or move that "
                      "file.") from None
    raise UserError(f"The folder '{path}' cannot be made ({err.strerror or err}): choose a path you can write "
                    "to.") from None


def remove(path) -> None:
  """Deletes a file; a missing one is fine."""
  try:
    if is_url(path):
      epath_of(path).unlink()
    else:
      os.remove(path)
  except FileNotFoundError:
    pass


def rename(src, dst) -> None:
  """Moves a file or folder (on an object store a copy and a delete of every object under it)."""
  if not is_url(src):
    os.rename(src, dst)
    return
  # Object by object: emulators and some stores lack a server-side rewrite, and a bucket has no real folders.
  src_text, dst_text = os.fspath(src).rstrip("/"), os.fspath(dst).rstrip("/")
  if isfile(src_text):
    write_atomically(dst_text, read_bytes(src_text))
    remove(src_text)
    return
  for path in walk_files(src_text):
    write_atomically(dst_text + path[len(src_text):], read_bytes(path))
  epath_of(src_text).rmtree()


def read_bytes(path) -> bytes:
  if not is_url(path):
    with open(path, "rb") as f:
      return f.read()
  return epath_of(path).read_bytes()


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def write_atomically(path, data) -> None:
  """Writes `path` so that a reader never sees half a file (see the module docstring). `data` is bytes, text, or a
  writer: a function that writes the whole file at the temporary path it is given (np/torch/safetensors savers),
  for files that are made by a library rather than held as bytes."""
  if callable(data):
    if is_url(path):  # made on local disk, then uploaded whole
      with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, os.path.basename(os.fspath(path)))
        data(local)
        epath_of(path).write_bytes(read_bytes(local))
      return
    tmp = _temporary_name(path)
    try:
      data(tmp)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    return
  payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  if is_url(path):
    epath_of(path).write_bytes(payload)
    return
  write_atomically(path, lambda tmp: _write_new(tmp, payload))


def _temporary_name(path) -> str:
  """A temporary sibling of `path` (so a rename or link to `path` stays on one filesystem), named for `path` and
  unique to its writer: host, process and a random tag, so no other thread, process or host shares it."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  return os.path.join(folder, f".{os.path.basename(path)}.tmp-{tag}")


def _write_new(path, payload: bytes) -> None:
  with open(path, "xb") as f:  # not tempfile.mkstemp: its files are private to their owner
    f.write(payload)


def save_figure(fig, path, **savefig_kwargs) -> None:
  """A matplotlib figure written atomically, to disk or an object store, in the format of its extension."""
  buffer = io.BytesIO()
  fmt = os.path.splitext(os.fspath(path))[1].lstrip(".") or "png"
  fig.savefig(buffer, format=fmt, **savefig_kwargs)
  write_atomically(path, buffer.getvalue())


def create_exclusive(path, data: bytes | str) -> bool:
  """Creates `path` holding `data` only if it does not exist; False when it does (see the module docstring)."""
  payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
  if is_url(path):
    import fsspec  # pylint: disable=g-import-not-at-top  (epath's open has no exclusive mode)
    fs, inner = fsspec.core.url_to_fs(os.fspath(path))
    try:
      if scheme(path) == "gs":  # one request: a simple upload with ifGenerationMatch=0
        fs.pipe_file(inner, payload, mode="create")
      else:
        with fs.open(inner, "xb") as f:
          f.write(payload)
      return True
    except FileExistsError:
      return False
    except (ValueError, NotImplementedError) as e:
      raise UserError(f"'{path}' cannot be created exclusively on {scheme(path)}:// ({e}), which the workdir "
                      "lock needs: use a local or gs:// workdir.") from None
  tmp = _temporary_name(path)
  _write_new(tmp, payload)
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.remove(tmp)


def walk_files(folder) -> list[str]:
  """Every file under `folder`, recursively (following links on disk), as full paths, sorted."""
  out = []
  if not is_url(folder):
    for root, dirs, files in os.walk(folder, followlinks=True):
      dirs.sort()
      out += [os.path.join(root, name) for name in files]
    return sorted(out)
  base = os.fspath(folder).rstrip("/")
  prefix = scheme(base) + "://"
  for root, _, files in epath_of(base).walk():
    root = os.fspath(root)  # fsspec drops the scheme
    root = root if root.startswith(prefix) else prefix + root
    out += [os.path.join(root, name) for name in files]
  return sorted(out)



def local_copy(url: str) -> str:
  """A local copy of a file or folder on an object store (for readers that want a path on disk: numpy, safetensors,
  torch, a ported VGG's Orbax folder), made once per machine under ~/.cache/jaxtickets/remote and reused."""
  import hashlib  # pylint: disable=g-import-not-at-top

  url = os.fspath(url).rstrip("/")
  if not exists(url):
    raise UserError(f"'{url}' does not exist: check the path (and that this machine may read the bucket).")
  cache = os.environ.get("JAXTICKETS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxtickets"))
  home = os.path.join(cache, "remote", hashlib.sha256(url.encode()).hexdigest()[:16])
  local = os.path.join(home, os.path.basename(url))
  if os.path.exists(os.path.join(home, ".complete")):
    return local
  files = [url] if isfile(url) else walk_files(url)
  for path in files:  # each file written atomically; the marker last, so a cut-short copy is made again
    write_atomically(local + path[len(url):], read_bytes(path))
  write_atomically(os.path.join(home, ".complete"), url)
  return local
