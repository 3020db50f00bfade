"""A local GCS server for the tests: gcp-storage-emulator on 127.0.0.1, taught one more part of the real API.

Run as `python tests/gcs_server.py PORT BUCKET`. The emulator ignores the upload precondition
ifGenerationMatch=0 ("create only if absent"), which real GCS honours with 412 and on which the workdir lock
relies; this wrapper honours it, so the lock's race is tested against the behaviour of the real service.
"""

from http import HTTPStatus
import http.server
import sys
import threading

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.storage import Storage

_must_be_new = threading.local()


class _Exists(Exception):
  pass


_create_file = Storage.create_file


def _create_file_if_new(self, bucket_name, file_name, *args, **kwargs):
  if getattr(_must_be_new, "on", False):
    try:
      self.get_file_obj(bucket_name, file_name)
      raise _Exists(file_name)
    except NotFound:
      pass
  return _create_file(self, bucket_name, file_name, *args, **kwargs)


_insert = objects.insert


def _insert_with_precondition(request, response, storage, *args, **kwargs):
  _must_be_new.on = request.query.get("ifGenerationMatch", [""])[0] == "0"
  try:
    return _insert(request, response, storage, *args, **kwargs)
  except _Exists:
    response.status = HTTPStatus.PRECONDITION_FAILED
  finally:
    _must_be_new.on = False


class _ConcurrentServer(http.server.ThreadingHTTPServer):
  """The emulator serves one connection at a time with a backlog of 5, so TensorStore's parallel requests (Orbax
  writes every array at once) find connections refused and responses cut off; real GCS takes them all. Connections
  are accepted in threads; the handlers still run one at a time (_serialized), since the emulator's storage was
  written for one."""
  request_queue_size = 256
  daemon_threads = True


_handling = threading.Lock()


def _serialized(method):
  def handle(self):
    with _handling:
      return method(self)
  return handle


def _with_generation(handler):
  """Media downloads carry the object's generation in x-goog-generation, as real GCS sends it: TensorStore reads
  it to condition its next write of an OCDBT manifest, and without it fails now and then ('Malformed
  StorageGeneration') when a read races a write."""
  def handle(request, response, storage, *args, **kwargs):
    result = handler(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except (NotFound, KeyError):
      pass
    return result
  return handle


def main(port: int, bucket: str) -> None:
  import logging, os
  if os.environ.get("GCS_SERVER_LOG"): logging.basicConfig(filename=os.environ["GCS_SERVER_LOG"], level=logging.INFO)
  http.server.HTTPServer = _ConcurrentServer  # what the emulator's APIThread builds
  for name in ("do_GET", "do_POST", "do_PUT", "do_DELETE", "do_PATCH", "do_HEAD"):
    if hasattr(server.RequestHandler, name):
      setattr(server.RequestHandler, name, _serialized(getattr(server.RequestHandler, name)))
  Storage.create_file = _create_file_if_new
  objects.insert = _insert_with_precondition
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is _insert:
        handlers[method] = _insert_with_precondition
      elif handler in (objects.download, objects.get):
        handlers[method] = _with_generation(handler)
  srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  srv.start()
  print("ready", flush=True)
  threading.Event().wait()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
