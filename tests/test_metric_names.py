"""Models name their own metrics: every model's loss reports exactly the names it declares, and the results tables
and the report carry those names (AdaAttN's global and local losses, not content and style)."""

import csv
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.reports import figures as report_figures, run_report as report_run
from jaxtickets.results import tables as results
from jaxtickets.models import adain, get_model, layers, losses, model_names
from helpers import tiny_config

W = 1 / 16
ADAATTN_TERMS = ("global", "local")


def _model(name, **kw):
  return get_model(name)(ml_collections.ConfigDict(dict(name=name, width=W, dtype="float32", **kw)))


# Every model, with a trained encoder and without; AdaAttN also with its optional content term switched on.
VARIANTS = [(name, {"train_encoder": te}) for name in model_names() for te in (False, True)] + [
    ("adaattn", {"train_encoder": False, "content_weight": 1.0})]


@pytest.mark.parametrize("name,kw", VARIANTS, ids=lambda v: str(v))
def test_loss_reports_exactly_the_declared_names(name, kw):
  m = _model(name, **kw)
  vgg = jax.eval_shape(m.init_vgg, jax.random.key(0))
  params = jax.eval_shape(m.init, jax.random.key(1), vgg)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  total, metrics = jax.eval_shape(m.loss, params, vgg, images, images, jax.random.key(2))
  assert set(metrics) == set(m.metric_names) and len(m.metric_names) == len(set(m.metric_names))
  assert m.metric_names[0] == "total" and total.shape == metrics["total"].shape == ()
  assert all(v.shape == () and v.dtype == jnp.float32 for v in metrics.values())
  assert m.terms, "a model names at least one loss term"
  # A name must not shadow a results.csv column or the step's learning rate.
  fixed = set(results.result_fields(())) | {"lr", "terms", "extra_metrics", "per_pair"}
  assert not fixed & set(m.terms + m.extra_metrics)


def test_each_model_names_its_terms():
  names = {name: _model(name).terms for name in model_names()}
  assert names["adain"] == names["lst"] == ("content", "style")
  assert names["adaattn"] == ADAATTN_TERMS
  assert _model("adaattn", content_weight=2.0).terms == ADAATTN_TERMS + ("content_norm",)
  assert names["sanet"] == ("content", "style", "identity1", "identity2")
  assert names["manet"] == ("content", "style", "identity1", "identity2", "disentangle")
  assert _model("manet").extra_metrics == ("disentangle_on",)
  assert names["mccnet"] == ("content", "style", "identity1", "identity2", "noise", "tv")


def test_named_metrics_refuses_undeclared_names():
  m = _model("adain")
  with pytest.raises(ValueError, match="declares"):
    m.named_metrics(jnp.float32(1.0), {"content": jnp.float32(0.5)})


def _old_adain_style_loss(g_taps, s_taps):
  """AdaIN's own copy of the style loss, as it was before it used the shared one."""
  total = jnp.float32(0.0)
  for t in adain.STYLE_TAPS:
    mg, sg = layers.mean_std(g_taps[t])
    ms, ss = layers.mean_std(s_taps[t])
    total += jnp.mean((mg - ms) ** 2) + jnp.mean((sg - ss) ** 2)
  return total


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_adain_style_loss_is_the_shared_one_and_the_hand_computation(dtype):
  rng = np.random.default_rng(0)
  shapes = {"r11": (2, 16, 16, 4), "r21": (2, 8, 8, 8), "r31": (2, 4, 4, 16), "r41": (2, 2, 2, 32),
            "r51": (2, 1, 1, 32)}
  g, s = ({t: jnp.asarray(rng.normal(size=sh) * (1 + i), dtype) for i, (t, sh) in enumerate(shapes.items())}
          for _ in range(2))
  shared = losses.mean_std_style_loss(g, s, adain.STYLE_TAPS)
  np.testing.assert_array_equal(shared, _old_adain_style_loss(g, s))
  want = 0.0
  for t in adain.STYLE_TAPS:  # r51 is not one of AdaIN's taps
    a, b = (np.asarray(x[t], np.float64) for x in (g, s))
    stats = lambda x: (x.mean(axis=(1, 2)), np.sqrt(x.var(axis=(1, 2), ddof=1) + 1e-5))
    (ma, sa), (mb, sb) = stats(a), stats(b)
    want += np.mean((ma - mb) ** 2) + np.mean((sa - sb) ** 2)
  np.testing.assert_allclose(shared, want, rtol=1e-5)


# ----------------------------------------------------------------------------- results tables and the report


def _meta(round_, rep, terms):
  """A ticket's metadata: per-pair losses that grow with the round, so every term has a relative difference."""
  rng = np.random.default_rng(10 * rep + round_)
  per_pair = {k: list(1.0 + 0.05 * round_ * (i + 1) + 0.01 * rng.random(4)) for i, k in enumerate(("total", *terms))}
  metrics = {k: float(np.mean(v)) for k, v in per_pair.items()}
  metrics.update(round=round_, steps=3, rewind_step=0, relative_to_dense=0.05 * round_, per_pair=per_pair,
                 terms=list(terms), extra_metrics=[])
  sp = 0.2 * round_
  entry = lambda: {"sparsity": sp, "remaining": 100, "size": 125}
  return {"metrics": metrics,
          "sparsity": {"prunable": entry(), "total": entry(), "inference": entry(), "groups": {"decoder": entry()}}}


def _fake_run(tmp_path, monkeypatch, terms):
  """A workdir of two replicates x rounds 0..2 of IMP whose tickets hold only `_meta`'s metadata."""
  metas = {}
  for rep in (0, 1):
    for round_ in (0, 1, 2):
      path = workdir_lib.ticket_dir(str(tmp_path), "imp", round_, rep)
      os.makedirs(path)
      metas[path] = _meta(round_, rep, terms)
  monkeypatch.setattr(checkpoint, "ticket_exists", lambda path: path in metas)
  monkeypatch.setattr(checkpoint, "load_ticket_metadata", lambda path: metas[path])
  return str(tmp_path)


def _header(workdir, name):
  with open(os.path.join(workdir, name)) as f:
    return next(csv.reader(f))


def test_adaattn_results_and_report_carry_its_own_term_names(tmp_path, monkeypatch):
  workdir = _fake_run(tmp_path, monkeypatch, ADAATTN_TERMS)
  config = tiny_config(model__name="adaattn", imp__branches="imp", imp__replicates=2)
  rows, summary = results.write_results(workdir, config.model.name, config_lib.resolve(config).protocol, skips={})
  head = _header(workdir, "results.csv")
  assert head[-4:] == ["global", "local", "total", "relative_to_dense"]
  assert "content" not in head and "style" not in head
  summary_head = _header(workdir, "summary.csv")
  assert [f for f in summary_head if f.endswith(("_relative", "_ci_low", "_ci_high")) and f != "vs_imp_ci_low"
          and f != "vs_imp_ci_high"] == ["global_relative", "global_ci_low", "global_ci_high", "local_relative",
                                         "local_ci_low", "local_ci_high"]
  assert checkpoint.load_json(os.path.join(workdir, "summary.json"))["terms"] == list(ADAATTN_TERMS)
  assert summary[1]["global_relative"] > 0 and summary[1]["local_ci_low"] <= summary[1]["local_relative"]
  text = report_run.format_markdown(config_lib.resolve(config), rows, summary, workdir, {}, [])
  assert "| global / local vs dense |" in text and "content" not in text.split("## Verdicts")[1]
  assert "| global | local | total | relative_to_dense |" in text  # the all-results table
  assert f"`python -m jaxtickets.report --workdir={workdir}` rebuilds this report" in text
  report_figures.plot_curves(summary, 0.02, str(tmp_path / "curves.png"), terms=ADAATTN_TERMS)
  with Image.open(tmp_path / "curves.png") as img:
    assert img.size == (1500, 520)  # three panels: total, global, local


def test_six_terms_give_seven_curve_panels_in_two_rows(tmp_path, monkeypatch):
  terms = _model("mccnet").terms
  workdir = _fake_run(tmp_path, monkeypatch, terms)
  rows, summary = results.write_results(workdir, "mccnet", config_lib.resolve(tiny_config(model__name="mccnet", imp__branches="imp")).protocol, skips={})
  assert _header(workdir, "results.csv")[-8:] == [*terms, "total", "relative_to_dense"]
  report_figures.plot_curves(summary, 0.02, str(tmp_path / "curves.png"), terms=results.run_terms(rows)[0])
  with Image.open(tmp_path / "curves.png") as img:
    assert img.size == (2000, 1040)


def test_content_style_models_keep_their_columns(tmp_path, monkeypatch):
  workdir = _fake_run(tmp_path, monkeypatch, ("content", "style"))
  results.write_results(workdir, "adain", config_lib.resolve(tiny_config(imp__branches="imp")).protocol, skips={})
  assert _header(workdir, "results.csv") == [f for f in results.RESULT_FIELDS
                                             if f not in ("sparsity_encoder", "sparsity_transform")]
  assert _header(workdir, "summary.csv")[:12 + 6] == list(results.SUMMARY_FIELDS[:12 + 6])


def test_curves_say_what_their_markers_mean_and_titles_clear_the_next_panel(tmp_path, monkeypatch):
  workdir = _fake_run(tmp_path, monkeypatch, ("content", "style"))
  rows, summary = results.write_results(workdir, "adain", config_lib.resolve(tiny_config(imp__branches="imp")).protocol,
                                        skips={})
  drawn = []
  save = report_figures.storage.save_figure
  monkeypatch.setattr(report_figures.storage, "save_figure", lambda fig, path, **kw: (drawn.append(fig),
                                                                                      save(fig, path, **kw)))
  report_figures.plot_curves(summary, 0.02, str(tmp_path / "curves.png"), terms=results.run_terms(rows)[0])
  (fig,) = drawn
  total, content, style = fig.axes
  verdicts = [r["verdict"] for r in summary]
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert "dense network" in labels and all(v in labels for v in verdicts if v)
  assert "inconclusive" in labels or "inconclusive" not in verdicts
  # The total's panel marks each round by its verdict; a term's panel has no verdict of its own.
  want = {"matches": "o", "inconclusive": "o", "does not match": "X", "": "s"}
  points = lambda ax: [line.get_marker() for line in ax.lines
                       if len(line.get_xdata()) == 1 and line.get_marker() != "*"]
  assert points(total) == [want[v] for v in verdicts]
  assert set(points(content)) == set(points(style)) == {"."}
  # Each panel's title stays clear of the next panel's axis label.
  for left, right in ((total, content), (content, style)):
    assert not left.title.get_window_extent().overlaps(right.yaxis.label.get_window_extent()), left.get_title()
