"""Linear mode connectivity of a finished run's IMP rounds: python -m jaxtickets.stability --workdir=W.

Trains two copies of each chosen round's start with other data orders and measures the error barrier between them
(jaxtickets/run/stability.py); writes stability.csv, and report.md with stability.png and a section.
"""

if __name__ == "__main__":  # first, before the heavy imports: it may re-execute this command under tcmalloc
  from jaxtickets import tcmalloc  # pylint: disable=g-import-not-at-top
  tcmalloc.preload()

import os

from absl import app, flags

from jaxtickets import errors
from jaxtickets.errors import UserError
from jaxtickets.reports import run_report as report_run
from jaxtickets.run import stability

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A finished run's workdir (holds config.json and tickets/).")
  flags.DEFINE_list("rounds", [], "IMP rounds to measure (default: every finished round).")
  flags.DEFINE_integer("points", 11, "Points on the path, both ends included.")
  flags.DEFINE_integer("replicate", 0, "Which replicate's tickets.")


def main(argv):
  if not FLAGS["verbosity"].present:
    from absl import logging  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)  # JAX's probing for absent TPU/GPU backends is INFO noise

  def work():
    if not FLAGS.workdir:
      raise UserError("Pass --workdir=DIR, the workdir of a finished run (e.g. runs/adain).")
    try:
      rounds = [int(r) for r in FLAGS.rounds]
    except ValueError:
      raise UserError(f"--rounds={','.join(FLAGS.rounds)} is not a list of round numbers: write e.g. --rounds=0,2,4.")
    from jaxtickets.core import parallel
    parallel.initialize_distributed()  # a pod's launcher environment (TPU, SLURM, JAX_* variables), if any
    stability.run(FLAGS.workdir, rounds, FLAGS.points, FLAGS.replicate)
    report_run.write_report(FLAGS.workdir, grid=False)

  errors.run_command(work, "jaxtickets.stability", argv)
  print(f"Wrote {os.path.join(FLAGS.workdir, stability.CSV)} and {stability.FIGURE} beside it; report.md has the section.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
