"""The study: its sub-runs and overrides, one combined report, and resuming on a second run."""

import importlib.util
import os

import pytest

from jaxtickets.results import tables as results
from jaxtickets import study
from jaxtickets.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"model": {"width": 0.0625, "train_encoder": True}, "data": {"load_size": 40, "crop_size": 32},
        "train": {"steps": 2, "batch_size": 2, "log_every": 1, "lr": 1e-3}, "imp": {"rounds": 1, "replicates": 1},
        "eval": {"num_pairs": 2, "batch_size": 2}}


def study_module():
  spec = importlib.util.spec_from_file_location("study_adain", os.path.join(ROOT, "configs", "study_adain.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def study_config(variant="demo"):
  return study_module().get_config(variant)


def test_plan_has_the_papers_comparisons(tmp_path):
  c = study_config("")
  runs, notes = study.plan(c, str(tmp_path))
  by = {r.name: r for r in runs}
  assert list(by) == ["reference", "encoder_fixed"]
  assert by["reference"].config.imp.branches == "imp,random_prune,random_reinit,oneshot"
  assert by["reference"].config.model.train_encoder and not by["encoder_fixed"].config.model.train_encoder
  assert by["encoder_fixed"].config.imp.branches == "imp"
  assert by["reference"].config.train.steps == 160_000  # paper scale: configs/adain.py as it is
  assert by["encoder_fixed"].workdir == os.path.join(str(tmp_path), "adain", "encoder_fixed")
  assert any("no transform parameters" in n for n in notes)
  demo, _ = study.plan(study_config("demo"), str(tmp_path))
  assert demo[0].config.train.steps == 6 and demo[0].config.model.width == 0.25
  assert demo[0].config.data.content == "demo"


def test_sweep_variants_plan_their_sub_runs(tmp_path):
  module = study_module()
  runs, _ = study.plan(module.get_config("demo_sweep"), str(tmp_path))
  assert [(r.name, r.config.imp.rewind_step, r.config.imp.early_bird, r.config.imp.branches) for r in runs] == [
      ("reference", 0, False, "imp"), ("rewind_0", 0, False, "imp"), ("rewind_2", 2, False, "imp"),
      ("early_bird", 0, True, "imp")]
  assert all(r.config.train.steps == 6 and r.config.imp.early_bird_every == 2 for r in runs)
  # demo_sweep adds its early-bird fields to its own copy of the demo's overrides, not to the demo's.
  assert "early_bird_every" not in module.DEMO_OVERRIDES["imp"]
  assert "early_bird_every" not in module.get_config("demo").overrides.imp
  sweep, _ = study.plan(module.get_config("sweep"), str(tmp_path))
  assert [r.config.imp.rewind_step for r in sweep] == [0, 0, 800, 3200, 0]  # 0.5% and 2% of 160k steps


def test_a_sub_run_with_the_reference_s_imp_shares_its_tickets_and_only_that_one(tmp_path):
  c = study_config("demo")
  c.comparisons, c.rewind_steps = "baselines,rewind,early_bird", "0,2"
  runs, _ = study.plan(c, str(tmp_path))
  by_name = {r.name: r for r in runs}
  assert by_name["reference"].config.imp.branches != by_name["rewind_0"].config.imp.branches  # baselines differ
  assert study.same_imp(by_name["reference"], by_name["rewind_0"])
  assert not any(study.same_imp(by_name["reference"], by_name[n]) for n in ("rewind_2", "early_bird"))


def test_overrides_and_bad_values():
  assert study.field_items({"train": {"steps": 5}, "sparsity.scope": "decoder,transform",
                            "model": {"vgg_weights": ""}}) == [
      ("train.steps", 5), ("sparsity.scope", "decoder,transform"), ("model.vgg_weights", "")]
  c = study_config("")
  c.overrides = {"train": {"stepz": 5}}
  with pytest.raises(UserError, match="train.stepz"):
    study.plan(c, "/tmp/x")
  c.overrides = {"train": {"steps": "many"}}
  with pytest.raises(UserError, match="config.overrides sets train.steps = 'many'"):
    study.plan(c, "/tmp/x")
  c = study_config("")
  c.comparisons = "encoder,speed"
  with pytest.raises(UserError, match="'speed'"):
    study.plan(c, "/tmp/x")


def _ticket_times(workdir):
  out = {}
  for root, _, files in os.walk(os.path.join(workdir)):
    branch = os.path.basename(os.path.dirname(os.path.dirname(root)))  # <branch>/rep_<r>/round_NN
    if branch in ("imp", "random_prune") and "_CHECKPOINT_METADATA" in files:
      out[root] = os.path.getmtime(os.path.join(root, "_CHECKPOINT_METADATA"))
  return out


@pytest.mark.e2e
def test_tiny_study_writes_one_report_and_resumes(tmp_path):
  c = study_config("demo")
  c.overrides = TINY
  c.baselines = "random_prune"
  c.reports = False
  path = study.run(c, str(tmp_path))
  assert path == str(tmp_path / "study.md") and os.path.getsize(tmp_path / "study.png") > 10_000
  text = open(path).read()
  for name in ("reference", "encoder_fixed"):
    rows = results.collect_rows(str(tmp_path / "adain" / name))
    assert [(r["branch"], r["round"]) for r in rows] == (
        [("imp", 0), ("imp", 1)] + ([("random_prune", 1)] if name == "reference" else []))
    dense = rows[0]["total"]
    # A tiny run's dense network collapses (its reconstruction is below a flat image): the table says so.
    assert f"| adain | {name} | {'trained' if name == 'reference' else 'fixed'} | {dense:.6g}" in text
  assert "Finding 1" in text and "Finding 2" in text and "no transform parameters" in text
  # The runs table names what each sub-run trained with: its scope, branches (IMP first) and rounds.
  ref = next(r for r in study.plan(c, str(tmp_path))[0] if r.name == "reference")
  assert (f"| adain | reference | trained | `{ref.config.sparsity.scope}` | imp,random_prune | "
          f"1 of {ref.config.imp.rounds} |") in text
  before = _ticket_times(str(tmp_path))
  assert len(before) == 5
  study.run(c, str(tmp_path))  # resumes: every ticket is already there, nothing is trained again
  assert _ticket_times(str(tmp_path)) == before


PREEMPTED_STUDY = """
import sys
from absl import app
from jaxtickets.run import preempt
from jaxtickets import study

def preempted_run(config, workdir):
  raise preempt.Preempted(7, "[imp round 1]", "SIGTERM", "step 7")

study.run = preempted_run
study.define_flags()
sys.argv = ["study", "--config=configs/study_adain.py:demo", "--workdir=w"]
app.run(study.main)
"""


@pytest.mark.e2e
def test_preempted_study_exits_75_and_says_how_to_resume():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  done = subprocess.run([sys.executable, "-c", PREEMPTED_STUDY], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert done.returncode == 75, done.stderr[-2000:]  # EX_TEMPFAIL: schedulers run it again
  assert "Stopped by SIGTERM at step 7 of [imp round 1]; the checkpoint is step 7." in done.stdout
  assert done.stdout.rstrip().endswith("To resume, run the same command again: "
                                       f"{os.path.basename(sys.executable)} -m jaxtickets.study "
                                       "--config=configs/study_adain.py:demo --workdir=w")
  assert "Traceback" not in done.stderr


@pytest.mark.e2e
def test_rewind_sweep_and_early_bird_study(tmp_path):
  """One IMP per rewind point with each round's stability, and early-bird IMP against the reference's IMP."""
  c = study_config("demo_sweep")
  c.overrides = TINY
  c.overrides.train.steps = 4
  c.overrides.imp.update(replicates=2, early_bird_every=1, early_bird_epsilon=0.99, early_bird_patience=1)
  c.rewind_steps = "0,25%"  # 25% of 4 steps = step 1
  c.reports = False
  runs, _ = study.plan(c, str(tmp_path))
  assert [(r.name, r.config.imp.rewind_step, r.config.imp.early_bird) for r in runs] == [
      ("reference", 0, False), ("rewind_0", 0, False), ("rewind_1", 1, False), ("early_bird", 0, True)]
  path = study.run(c, str(tmp_path))
  text = open(path).read()
  assert "## Rewind sweep" in text and "## Early-bird tickets vs full IMP" in text
  assert os.path.getsize(tmp_path / "rewind.png") > 10_000
  # rewind_0 is the reference's IMP: its tickets are the reference's files, linked, not trained again.
  ours = lambda run: tmp_path / "adain" / run / "tickets" / "imp"
  files = [f for f in ours("reference").rglob("*") if f.is_file()]
  assert files and all(os.path.samefile(f, ours("rewind_0") / f.relative_to(ours("reference"))) for f in files)
  assert not any(os.path.samefile(f, ours("rewind_1") / f.relative_to(ours("reference"))) for f in files
                 if (ours("rewind_1") / f.relative_to(ours("reference"))).exists())
  for k in (0, 1):
    rows = list(open(tmp_path / "adain" / f"rewind_{k}" / "stability.csv"))
    assert len(rows) == 3  # header, rounds 0 and 1
    assert f"| adain | {k} | " in text
  # The early-bird run stopped its dense rounds at step 2 of 4: round 1 has cost 2 + 4 steps against IMP's 4 + 4.
  line = next(l for l in text.splitlines() if l.startswith("| adain | 1 | 0.2000 |"))
  cells = [x.strip() for x in line.strip("|").split("|")]
  assert cells[-2:] == ["8", "6"] and cells[6] in ("imp better", "imp worse", "inconclusive")
  with pytest.raises(UserError, match="rewind_steps is empty"):
    c.rewind_steps = ""
    study.plan(c, str(tmp_path))
