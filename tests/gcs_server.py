"""A local GCS server for the tests: gcp-storage-emulator on 127.0.0.1, taught one more part of the real API.

Run as `python tests/gcs_server.py PORT BUCKET`. The emulator ignores the upload precondition
ifGenerationMatch=0 ("create only if absent"), which real GCS honours with 412 and on which the workdir lock
relies; this wrapper honours it, so the lock's race is tested against the behaviour of the real service.
"""

from http import HTTPStatus
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


def main(port: int, bucket: str) -> None:
  Storage.create_file = _create_file_if_new
  objects.insert = _insert_with_precondition
  for _, handlers in server.HANDLERS:
    for method, handler in list(handlers.items()):
      if handler is _insert:
        handlers[method] = _insert_with_precondition
  srv = server.create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  srv.start()
  print("ready", flush=True)
  threading.Event().wait()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
