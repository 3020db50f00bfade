"""The evidence of a run: python -m jaxtickets.report --workdir=DIR (main runs it at the end, too).

Writes into the workdir (process 0 only):
  results.csv, summary.csv, summary.json   rebuilt from the saved tickets (results.write_results)
  curves.png     the geometric mean ratio of held-out loss (ticket / dense) - 1 over replicates and image
                 combinations, in the total loss and in each of the model's loss terms (one panel each) vs sparsity,
                 one line per branch with its 95% interval as a band, the tolerance as a line, each branch's highest
                 matching sparsity starred
  layers.png     per-layer sparsity of replicate 0's final IMP ticket (which layers IMP empties first)
  grid.png       rows = held-out content/style pairs, columns = content, style, dense and each IMP round (rep 0)
  report.md      the settings (replicates, pairs, rewind point), the verdicts, the dense round's learnability check,
                 the replicate spread and the replicates it calls for, IMP vs each baseline, the figures

results/tables.py and results/stats.py compute; results/text.py words the verdicts, reports/figures.py draws,
reports/run_report.py writes report.md and reports/study_report.py the study's study.md. This is the command line.
"""

from absl import app, flags

from jaxtickets.results import tables as results
from jaxtickets.store import workdir as workdir_lib
from jaxtickets import errors
from jaxtickets.errors import UserError
from jaxtickets.results.text import learnability_lines, planner_lines
from jaxtickets.reports.run_report import write_report


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a program: main defines --workdir too."""
  flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json and tickets/).")
  flags.DEFINE_bool("grid", True, "Draw the image grid (stylizes the held-out pairs with every IMP ticket).")


def main(argv):
  def work():
    if not FLAGS.workdir:
      raise UserError("Pass --workdir=DIR, the workdir of a run (e.g. runs/adain).")
    return write_report(FLAGS.workdir, grid=FLAGS.grid)

  path = errors.run_command(work, "jaxtickets.report", argv)
  if path:
    print(f"Wrote {path} with its figures (PNG) beside it.")
    tolerance = workdir_lib.load_run_settings(FLAGS.workdir).protocol.match_tolerance
    rows = results.collect_rows(FLAGS.workdir)
    for line in learnability_lines(results.summarize(rows, tolerance)) + planner_lines(rows, tolerance):
      print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main)
