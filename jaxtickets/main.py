"""Finds lottery tickets in a style transfer model: python -m jaxtickets.main --config=configs/adain.py[:demo].

Running the same command again on the same --workdir resumes an interrupted run. On SIGTERM (preemption) the run
saves a checkpoint and exits with status 75 (EX_TEMPFAIL: "try again"), so job schedulers restart it; on Ctrl-C it
does the same and exits with status 130.
"""

import functools
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (not on import: the commands share flag names such as --config)."""
  flags.DEFINE_string("workdir", None, "Where tickets, checkpoints and results go (default: runs/<model>).")
  flags.DEFINE_bool("allow_config_change", False, "Resume a run in --workdir even though the config differs from "
                    "its config.json (the differing fields are listed).")
  flags.DEFINE_string("coordinator_address", None, "Multi-process: HOST:PORT of process 0 (else "
                      "$JAX_COORDINATOR_ADDRESS; TPU pods, SLURM and Open MPI are detected automatically).")
  flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes (else $JAX_NUM_PROCESSES).")
  flags.DEFINE_integer("process_id", None, "Multi-process: this process's id (else $JAX_PROCESS_ID).")
  config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/adain.py or configs/adain.py:demo.",
                                  lock_config=True)


def train_and_evaluate(config, workdir: str, *, allow_config_change: bool = False) -> None:
  """The command's work on every process: the config checked and resolved once into settings.RunSettings, every
  round and baseline trained (imp.run), then report.md (process 0 writes it, reading tickets without the others)."""
  import jax

  from jaxtickets.core import parallel
  from jaxtickets.reports import run_report
  from jaxtickets.run import imp

  # Resolved on every host: a problem one of them sees (a folder missing on its disk) stops them all.
  run_settings = parallel.agree(functools.partial(resolve_run, config, workdir))
  imp.run(run_settings, workdir, allow_config_change=allow_config_change)
  run_report.write_report(workdir)  # from the workdir alone, as python -m jaxtickets.report rebuilds it
  if jax.process_count() > 1:  # the others wait, so no process leaves the coordination service early
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("jaxtickets: report written")


def resolve_run(config, workdir: str):
  """The settings.RunSettings of `config` for a run in `workdir`: a relative config.model.vgg_weights that does not
  exist from here is where that run found it (so the same command resumes from another directory or host), then
  the config is checked and resolved."""
  from jaxtickets import config as config_lib
  from jaxtickets.run import imp
  from jaxtickets.weights import files as weights

  return config_lib.checked_settings(
      config, vgg_weights=weights.locate_run_vgg(config.model.vgg_weights, workdir, imp.log))


def main(argv):
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # JAX's probing for absent TPU/GPU backends is INFO noise; -v 0 shows it
  import jax

  from jaxtickets import errors
  from jaxtickets.errors import UserError
  from jaxtickets.run import imp

  config = FLAGS.config
  workdir = FLAGS.workdir or (os.path.join("runs", config.model.name) if config is not None else "")

  def work():
    if config is None:
      raise UserError("Pass a config: python -m jaxtickets.main --config=configs/adain.py:demo")
    from jaxtickets.core import parallel
    from jaxtickets import storage
    storage.check_reachable(workdir, "--workdir")  # gs:// needs gcsfs: say so before anything starts
    # Before anything touches the devices: every host of a pod joins one run.
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if jax.process_count() > 1:
      imp.log(f"{jax.process_count()} processes, {jax.device_count()} devices: {jax.devices()}")
    train_and_evaluate(config, workdir, allow_config_change=FLAGS.allow_config_change)

  errors.run_command(work, "jaxtickets.main", argv)
  print(f"Tickets and results are in {workdir}/: report.md (figures, tables), results.csv, tickets/<branch>/rep_<r>/round_NN.")


if __name__ == "__main__":
  from jaxtickets import tcmalloc
  tcmalloc.preload()  # first: it may re-execute this command under tcmalloc (CPU only)
  from jaxtickets import config as config_lib_flags  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=config_lib_flags.parse_flags)
