"""Plots the training loss of a run's rounds from its log: python scripts/plot_training_curves.py LOG OUT.png.

Reads the lines `[rep R BRANCH round N] step S/T  loss L ...` that jaxtickets.main prints every train.log_every
steps, and draws one panel per branch/round chosen with --rounds (default: the dense round 0 of IMP), one line per
replicate plus a running mean, so a reader can see whether the loss has flattened by the end of a round.
"""

import argparse
import re
import sys

import numpy as np
from matplotlib.figure import Figure

LINE = re.compile(r"^\[rep (\d+) (\w+) round (\d+)\] step (\d+)/(\d+)\s+loss ([-+0-9.eE]+|nan|inf)")


def parse(lines) -> dict[tuple[str, int], dict[int, list[tuple[int, float]]]]:
  """{(branch, round): {replicate: [(step, loss), ...]}} of every logged training step."""
  out: dict = {}
  for line in lines:
    m = LINE.match(line)
    if m:
      rep, branch, round_, step, _, loss = m.groups()
      out.setdefault((branch, int(round_)), {}).setdefault(int(rep), []).append((int(step), float(loss)))
  return out


def running_mean(y: np.ndarray, window: int) -> np.ndarray:
  window = max(1, min(window, len(y)))
  return np.convolve(y, np.ones(window) / window, mode="valid")


def plot(curves, keys, path: str, window: int) -> None:
  fig = Figure(figsize=(6 * len(keys), 4.2), layout="constrained")
  axes = np.atleast_1d(fig.subplots(1, len(keys)))
  for ax, key in zip(axes, keys):
    for rep, points in sorted(curves[key].items()):
      steps, losses = map(np.asarray, zip(*sorted(set(points))))  # a resumed round logs some steps twice
      ax.plot(steps, losses, color=f"C{rep}", alpha=0.3, lw=1)
      smooth = running_mean(losses, window)
      ax.plot(steps[len(steps) - len(smooth):], smooth, color=f"C{rep}", lw=2,
              label=f"replicate {rep} (running mean of {window} logs)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (one batch per point)")
    ax.set_title(f"{key[0]} round {key[1]}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.savefig(path, dpi=100)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("log")
  parser.add_argument("out")
  parser.add_argument("--rounds", default="imp:0", help="comma-separated BRANCH:ROUND panels, e.g. imp:0,imp:4")
  parser.add_argument("--window", type=int, default=4, help="logged points per running mean")
  args = parser.parse_args(argv)
  with open(args.log) as f:
    curves = parse(f)
  keys = []
  for item in args.rounds.split(","):
    branch, _, round_ = item.partition(":")
    key = (branch.strip(), int(round_ or 0))
    if key not in curves:
      sys.exit(f"error: the log '{args.log}' has no training steps of {key[0]} round {key[1]}; it has "
               f"{', '.join(f'{b}:{r}' for b, r in sorted(curves)) or 'none'}.")
    keys.append(key)
  plot(curves, keys, args.out, args.window)
  print(f"Wrote {args.out}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
