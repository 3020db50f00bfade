"""The report of a tiny replicated run: every figure, the tables, and report.md numbers that match them."""

import csv
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.core import evaluate
from jaxtickets.run import imp
from jaxtickets.tickets import inference
from jaxtickets.reports import run_report as report_run
from jaxtickets.results import tables as results, text as report_text
from helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.e2e  # every test reads one module-wide replicated IMP run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(imp__branches="imp,random_prune", train__steps=2, imp__rounds=2, imp__replicates=2)
  imp.run(config_lib.resolve(config), workdir)
  for name in ("results.csv", "summary.csv"):
    os.remove(os.path.join(workdir, name))  # the report rebuilds them from the tickets
  path = report_run.write_report(workdir)
  return workdir, config, path


def read_csv(workdir, name="results.csv"):
  with open(os.path.join(workdir, name)) as f:
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


def test_results_csv_has_one_row_per_branch_round_and_replicate(run):
  workdir, _, _ = run
  rows = read_csv(workdir)
  assert [(r["branch"], int(r["replicate"]), int(r["round"])) for r in rows] == [
      ("imp", rep, r) for rep in (0, 1) for r in (0, 1, 2)] + [("random_prune", rep, r) for rep in (0, 1) for r in (1, 2)]
  # The learnability check's columns come with tickets that recorded it (the evaluation does).
  learn = "recon_psnr" in checkpoint.load_ticket_metadata(workdir_lib.ticket_dir(workdir, "imp", 0, 0))["metrics"]
  assert list(rows[0]) == [f for f in results.result_fields(learnability=learn) if f != "sparsity_transform"]


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


def test_report_md_numbers_match_the_tables(run):
  workdir, config, path = run
  text = open(path).read()
  csv_rows = read_csv(workdir)
  md_rows = _md_table(text, "branch | replicate | round")
  assert len(md_rows) == len(csv_rows)
  for md, cs in zip(md_rows, csv_rows):
    assert (md["branch"], md["replicate"], md["round"]) == (cs["branch"], cs["replicate"], cs["round"])
    for key in ("sparsity_prunable", "sparsity_total", "sparsity_inference", "sparsity_decoder", "remaining_prunable",
                "remaining_total", "content", "style", "total", "relative_to_dense"):
      assert _num(md[key]) == pytest.approx(float(cs[key]), rel=1e-3, abs=1e-4), key
  summary = read_csv(workdir, "summary.csv")
  verdicts = _md_table(text, "branch | round | sparsity (prunable) | sparsity (inference)")
  assert len(verdicts) == len(summary)
  # A few steps from a random start leave most networks collapsed: the verdicts rest on the replicates left.
  dead = [c for c in csv_rows if c["collapsed"]]
  for md, cs in zip(verdicts, summary):
    assert (md["branch"], md["round"]) == (cs["branch"], cs["round"])
    assert md["verdict"].startswith(cs["verdict"] or "(dense reference)")
    assert md["replicates x pairs (image combinations)"] == f"{cs['replicates']} x 2 ({cs['combinations']})"
    assert cs["combinations"] == "2" and int(cs["replicates"]) == 2 - int(cs["collapsed"]) - int(cs["dense_collapsed"])
    if not cs["relative_to_dense"]:  # no replicate left to compare
      assert md["ticket / dense - 1 (geometric mean)"] == md["95% interval"] == ""
      continue
    assert _num(md["ticket / dense - 1 (geometric mean)"]) == pytest.approx(float(cs["relative_to_dense"]), abs=1e-4)
    if cs["verdict"]:
      low, high = (_num(v.strip()) for v in md["95% interval"].strip("[]").split(","))
      assert (low, high) == (pytest.approx(float(cs["ci_low"]), abs=1e-4), pytest.approx(float(cs["ci_high"]), abs=1e-4))
  line = report_text.collapsed_line(results.summarize(results.collect_rows(workdir), 0.02))
  assert (line is None) == (not dead) and (line is None or f"- {line}" in text)
  compared = [r for r in summary if r["branch"] == "random_prune" and r.get("vs_imp")]
  against = _md_table(text, "branch | round | sparsity | baseline / IMP - 1 (geometric mean)") if compared else []
  assert [(r["branch"], r["round"]) for r in against] == [(r["branch"], r["round"]) for r in compared]
  for md, cs in zip(against, compared):
    assert md["comparison"] == cs["vs_imp_verdict"] and _num(md["baseline / IMP - 1 (geometric mean)"]) == \
        pytest.approx(float(cs["vs_imp"]), abs=1e-4)
  dense = csv_rows[0]
  assert f"{int(dense['remaining_total']):,} in all, {int(dense['remaining_prunable']):,} prunable" in text
  assert f"`{config.sparsity.scope}`" in text and "rewind point used | 0 (the initial weights)" in text
  assert "2 pruned round(s) done of 2" in text
  assert "2 done of 2 configured (seeds 0 + r); each point rests on 2 replicate(s) x 2 held-out pairs" in text
  assert results.match_rule(config.imp.match_tolerance) in text
  rows = results.collect_rows(workdir)
  for line in report_text.matching_lines(results.summarize(rows, 0.02), 0.02):
    assert line.strip() in text
  assert results.ESTIMATOR in text and "mean relative difference" not in text
  # The replicate planner: the spread measured from the pruned rounds of the 2 replicates, and what it calls for.
  planner = report_text.planner_lines(rows, 0.02)
  if not dead:
    assert "pooled over IMP's 2 pruned round(s)" in planner[0] and "2% needs" in planner[1]
  for line in planner:
    assert f"- {line}" in text
  # The learnability check, when the tickets recorded it: the dense round's line and a row per branch and round.
  learn = report_text.learnability_lines(results.summarize(rows, 0.02))
  if "recon_psnr" in rows[0]:
    assert learn and "## Learnability" in text and "| reconstruction PSNR | flat image PSNR |" in text
    assert all(f"- {line}" in text for line in learn)
    # The mean over the cell's tickets that were used: neither they nor their dense round collapsed.
    dense_dead = {c["replicate"] for c in dead if c["round"] == "0"}
    for r in summary:
      used = [float(c["recon_psnr"]) for c in csv_rows if (c["branch"], c["round"]) == (r["branch"], r["round"])
              and not c["collapsed"] and c["replicate"] not in dense_dead]
      assert (float(r["recon_psnr"]) if r.get("recon_psnr") else None) == (
          pytest.approx(np.mean(used), abs=1e-5) if used else None)
  for name in ("curves.png", "layers.png", "grid.png"):
    assert f"]({name})" in text


def test_the_ticket_stylizer_reproduces_the_runs_evaluation(run):
  """from_ticket rebuilds the run's random VGG and masked weights: re-scoring the last ticket gives its metrics."""
  workdir, config, _ = run
  path = workdir_lib.ticket_dir(workdir, "imp", 2, 1)
  st = inference.Stylizer.from_ticket(path)
  from jaxtickets import data
  pairs = data.eval_pairs(config_lib.resolve(config).data)
  got = evaluate.evaluate(evaluate.make_eval_fn(st.model), st.params, st.masks, st.vgg_params, pairs,
                          config.eval.batch_size)
  want = checkpoint.load_ticket_metadata(path)["metrics"]
  assert got["total"] == pytest.approx(want["total"], rel=1e-4)


def test_cli_rebuilds_the_report_and_states_the_spread(run):
  workdir, _, _ = run
  os.remove(os.path.join(workdir, "summary.csv"))
  r = subprocess.run([sys.executable, "-m", "jaxtickets.report", f"--workdir={workdir}", "--nogrid"], cwd=ROOT,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert os.path.exists(os.path.join(workdir, "summary.csv"))
  for line in report_text.planner_lines(results.collect_rows(workdir), 0.02):
    assert line in r.stdout


def test_cli_without_a_run_is_one_sentence(tmp_path):
  r = subprocess.run([sys.executable, "-m", "jaxtickets.report", f"--workdir={tmp_path / 'none'}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and re.search(r"error: No run at '.*none'", r.stderr)
  assert "Traceback" not in r.stderr
