"""The report of a tiny 3-round run: every figure, results.csv, and report.md numbers that match it."""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxtickets import checkpoint, evaluate, imp, inference, report
from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(imp__branches="imp,random_prune", train__steps=2)
  imp.run(config, workdir)
  os.remove(os.path.join(workdir, "results.csv"))  # the report rebuilds it from the tickets
  path = report.write_report(workdir)
  return workdir, config, path


def read_csv(workdir):
  with open(os.path.join(workdir, "results.csv")) as f:
    return list(csv.DictReader(f))


def test_every_figure_is_a_sensible_png(run):
  workdir, _, path = run
  assert path == os.path.join(workdir, "report.md")
  for name, (min_w, min_h) in {"curves.png": (800, 300), "layers.png": (500, 300), "grid.png": (500, 250)}.items():
    with Image.open(os.path.join(workdir, name)) as img:
      assert img.format == "PNG"
      w, h = img.size
      assert min_w <= w <= 4000 and min_h <= h <= 4000, (name, img.size)
      pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
      assert pixels.std() > 5, name  # something is drawn


def test_results_csv_has_one_row_per_branch_and_round(run):
  workdir, _, _ = run
  rows = read_csv(workdir)
  assert [(r["branch"], int(r["round"])) for r in rows] == [("imp", 0), ("imp", 1), ("imp", 2), ("imp", 3),
                                                             ("random_prune", 1), ("random_prune", 2),
                                                             ("random_prune", 3)]
  assert list(rows[0]) == list(imp.RESULT_FIELDS)


def _md_table(text, first_header):
  """The rows of the markdown table whose header starts with `first_header`, as dicts."""
  lines = text.splitlines()
  start = next(i for i, l in enumerate(lines) if l.startswith(f"| {first_header} |"))
  header = [c.strip() for c in lines[start].strip("|").split("|")]
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("|"):
      break
    rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
  return rows


def _num(text):
  return float(text.replace(",", "").rstrip("%")) / (100 if text.endswith("%") else 1)


def test_report_md_numbers_match_results_csv(run):
  workdir, config, path = run
  text = open(path).read()
  csv_rows = read_csv(workdir)
  md_rows = _md_table(text, "branch | round | steps")
  assert len(md_rows) == len(csv_rows)
  for md, cs in zip(md_rows, csv_rows):
    assert (md["branch"], md["round"]) == (cs["branch"], cs["round"])
    for key in ("sparsity_prunable", "sparsity_total", "remaining_prunable", "remaining_total", "content", "style",
                "total", "relative_to_dense"):
      assert _num(md[key]) == pytest.approx(float(cs[key]), rel=1e-3, abs=1e-4), key
    assert md["matches"] == ("yes" if cs["matches"] == "True" else "no")
  # Highest matching sparsity per branch: the matching pruned round of highest sparsity in the csv.
  best = {r["branch"]: r for r in _md_table(text, "branch | round | sparsity (prunable)")}
  for branch in ("imp", "random_prune"):
    matching = [r for r in csv_rows if r["branch"] == branch and r["round"] != "0" and r["matches"] == "True"]
    if matching:
      top = max(matching, key=lambda r: float(r["sparsity_prunable"]))
      assert best[branch]["round"] == top["round"]
      assert _num(best[branch]["sparsity (prunable)"]) == pytest.approx(float(top["sparsity_prunable"]), abs=1e-4)
      assert _num(best[branch]["remaining (all)"]) == int(top["remaining_total"])
    else:
      assert best[branch]["round"] == "none"
  dense = csv_rows[0]
  assert f"{int(dense['remaining_total']):,} in all, {int(dense['remaining_prunable']):,} prunable" in text
  assert f"`{config.sparsity.scope}`" in text and "rewind step | 0" in text and "3 pruned round(s) done of 3" in text
  for name in ("curves.png", "layers.png", "grid.png"):
    assert f"]({name})" in text


def test_the_ticket_stylizer_reproduces_the_runs_evaluation(run):
  """from_ticket rebuilds the run's random VGG and masked weights: re-scoring the last ticket gives its metrics."""
  workdir, config, _ = run
  path = imp.ticket_dir(workdir, "imp", 3)
  st = inference.Stylizer.from_ticket(path)
  from jaxtickets import data
  pairs = data.eval_pairs(config)
  got = evaluate.evaluate(evaluate.make_eval_fn(st.model), st.params, st.masks, st.vgg_params, pairs,
                          config.eval.batch_size)
  want = checkpoint.load_ticket_metadata(path)["metrics"]
  assert got["total"] == pytest.approx(want["total"], rel=1e-4)


def test_cli_without_a_run_is_one_sentence(tmp_path):
  r = subprocess.run([sys.executable, "-m", "jaxtickets.report", f"--workdir={tmp_path / 'none'}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and re.search(r"error: No run at '.*none'", r.stderr)
  assert "Traceback" not in r.stderr
