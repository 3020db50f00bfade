"""Makes docs/pods.md's table: each (model, topology) planned once, its row kept as JSON, the table rendered from them.

  python scripts/pods_table.py compile --model=manet --topology=v5e:16x16   # one compile: docs/pods/<row>.json
  python scripts/pods_table.py render [--write]                            # the table; --write puts it in pods.md

A compile takes minutes (libtpu's, on this machine's CPU), so each row is its own command and is kept: a row
already made is not compiled again. The protocol's columns (packed steps, busy slots, cost) are worked out at
render time from the row's compiled figures and jaxtickets.run.order.phases, so a change of schedule re-renders
without a compile. Paper scale: each config's defaults, bfloat16, IMP and random pruning, 3 replicates.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

ROWS = os.path.join(os.path.dirname(__file__), "..", "docs", "pods")
PAGE = os.path.join(os.path.dirname(__file__), "..", "docs", "pods.md")
BEGIN, END = "<!-- pods_table.py render: begin -->", "<!-- pods_table.py render: end -->"
MODELS = ("adain", "sanet", "lst", "manet", "adaattn", "mccnet")
TOPOLOGIES = ("v5e:4x4", "v5e:16x16", "v4:2x2x2")
# The command-line overrides docs/pods.md names: --config.train.dtype=bfloat16 --config.imp.branches=imp,random_prune
# --config.imp.replicates=3.
PAPER_SCALE = {"train": {"dtype": "bfloat16"}, "imp": {"branches": "imp,random_prune", "replicates": 3}}


def row_path(model: str, topology: str) -> str:
  return os.path.join(ROWS, f"{model}_{topology.replace(':', '_')}.json")


def paper_config(model: str):
  """configs/<model>.py at its defaults with PAPER_SCALE's changes (the study's loader, so it reads configs alike)."""
  from jaxtickets import study  # pylint: disable=g-import-not-at-top
  config = study.variant_config(model, "", os.path.join(os.path.dirname(__file__), "..", "configs"))
  return study.with_changes(config, PAPER_SCALE, "pods_table.py")


def compile_row(model: str, topology: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  from jaxtickets.run import aot  # pylint: disable=g-import-not-at-top
  from jaxtickets import plan

  got = plan.make_plan(paper_config(model), aot.topology(topology))
  c = got.compiled
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
  return {"model": model, "topology": topology, "chips": got.target.chips, "hbm_bytes": got.target.memory_bytes,
          "peak_flops": got.target.peak_flops, "runs_per_step": got.layout.runs_per_step,
          "mesh": list(got.mesh_shape), "peak_bytes": c.peak_bytes, "flops": c.flops,
          "collectives": c.collectives, "compile_seconds": round(c.seconds),
          "layout_why": got.layout.why, "commit": commit,
          "jax": jax.__version__}


def protocol(row: dict) -> dict:
  """The protocol's packed steps and busy share for the row's runs per step, and its cost at peak and 40%."""
  from jaxtickets.run import order  # pylint: disable=g-import-not-at-top

  from jaxtickets import config as config_lib  # pylint: disable=g-import-not-at-top

  run = config_lib.resolve(paper_config(row["model"]))
  phases = order.phases(run.protocol, run.step.steps, row["runs_per_step"])
  packed = sum(p.packs * p.steps for p in phases)
  busy = sum(p.trainings * p.steps for p in phases) / sum(p.slots * p.steps for p in phases)
  hours = packed * row["flops"] / row["peak_flops"] / 3600
  return {"packed_steps": packed, "busy": busy, "hours": hours, "chip_hours": hours * row["chips"],
          "most_ready": order.most_ready(run.protocol, row["runs_per_step"]),
          "free_replicates": order.free_replicates(run.protocol, run.step.steps, row["runs_per_step"]),
          "phases": [dataclasses.asdict(p) | {"utilisation": p.utilisation} for p in phases]}


def _hours(h: float) -> str:
  return f"{h:,.1f} hours" if h >= 1 else f"{h * 60:.1f} minutes"


def render() -> str:
  lines = ["| model | topology | compiled | runs per step auto picks (runs x data) | peak per chip (of the HBM) | "
           "GFLOP per chip per step | collectives | packed steps of the protocol (busy slots) | most slots busy at once | "
           "replicates in as many packed steps | lower bound: at the chip's peak | at 40% of peak |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  missing = []
  for topology in TOPOLOGIES:
    for model in MODELS:
      path = row_path(model, topology)
      if not os.path.exists(path):
        missing.append(f"{model} on {topology}")
        continue
      row = json.load(open(path))
      p = protocol(row)
      found = ", ".join(f"{k} x{v}" for k, v in row["collectives"].items()) or "none"
      runs, data = row["mesh"]
      lines.append(
          f"| {model} | {topology} | yes, {row['compile_seconds']} s | {row['runs_per_step']} ({runs} x {data}) | "
          f"{row['peak_bytes'] / (1 << 30):.2f} GiB ({row['peak_bytes'] / row['hbm_bytes']:.1%}) | "
          f"{row['flops'] / 1e9:,.0f} | {found} | {p['packed_steps']:,} ({p['busy']:.0%} busy) | "
          f"{p['most_ready']} of {row['runs_per_step']} | {p['free_replicates']} | "
          f"{_hours(p['hours'])}, {p['chip_hours']:,.1f} chip-h | {_hours(p['hours'] / 0.4)}, "
          f"{p['chip_hours'] / 0.4:,.1f} chip-h |")
  rows = [json.load(open(row_path(m, t))) for t in TOPOLOGIES for m in MODELS if os.path.exists(row_path(m, t))]
  shrunk = [f"- {row['model']} on {row['topology']}: {row['layout_why']}." for row in rows if row.get("layout_why")]
  if shrunk:
    lines += ["", "Where auto packing left its first layout (the smallest 'runs' axis that holds the 3 replicates):", *shrunk]
  if missing:
    lines += ["", "Not compiled yet: " + ", ".join(missing) + "."]
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("what", choices=("compile", "render"))
  parser.add_argument("--model", choices=MODELS)
  parser.add_argument("--topology")
  parser.add_argument("--write", action="store_true", help=f"render: replace the table in {PAGE}")
  args = parser.parse_args()
  if args.what == "render":
    table = render()
    if not args.write:
      print(table)
      return
    page = open(PAGE).read()
    head, _, rest = page.partition(BEGIN)
    _, _, tail = rest.partition(END)
    if not rest:
      sys.exit(f"{PAGE} has no '{BEGIN}' line: add the two marker lines where the table goes.")
    with open(PAGE, "w") as f:
      f.write(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    return
  path = row_path(args.model, args.topology)
  if os.path.exists(path):
    print(f"{path} exists: remove it to compile again")
    return
  row = compile_row(args.model, args.topology)
  os.makedirs(ROWS, exist_ok=True)
  with open(path, "w") as f:
    json.dump(row, f, indent=1)
  print(json.dumps(row))


if __name__ == "__main__":
  main()
