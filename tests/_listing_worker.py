"""Helper for tests/test_storage.py: one of two processes that compare their data listings.

  python tests/_listing_worker.py PORT PROCESS_ID FOLDER

Joins a two-process JAX run on 127.0.0.1:PORT, runs data.check_listings_agree on a config whose content and style
are FOLDER, and prints 'agree' or the error's sentence.
"""

import sys

import jax


def main(port: str, process_id: str, folder: str) -> None:
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id))
  from jaxtickets import config as config_lib, data  # pylint: disable=g-import-not-at-top
  from jaxtickets.errors import UserError  # pylint: disable=g-import-not-at-top
  c = config_lib.default_config()
  c.data.content = c.data.style = folder
  try:
    data.check_listings_agree(config_lib.resolve(c).data)
    print("agree", flush=True)
  except UserError as e:
    print(f"error: {e}", flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
