"""Finds lottery tickets in a style transfer model: python -m jaxtickets.main --config=configs/adain.py[:demo]."""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Where tickets, checkpoints and results go (default: runs/<model>).")
config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/adain.py or configs/adain.py:demo.",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  import jax

  from jaxtickets import imp
  from jaxtickets.errors import UserError

  config = FLAGS.config
  if config is None:
    sys.exit("Pass a config: python -m jaxtickets.main --config=configs/adain.py:demo")
  workdir = FLAGS.workdir or os.path.join("runs", config.model.name)
  logging.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  try:
    imp.run(config, workdir)
  except UserError as e:
    sys.exit(f"error: {e}")
  print(f"Tickets and results are in {workdir}/ (results.csv, tickets/<branch>/round_NN).")


if __name__ == "__main__":
  app.run(main)
