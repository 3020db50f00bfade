"""A smoke run of scripts/bench.py at a tiny size: every figure is printed and lands in the JSON line."""

import importlib.util
import json
import math
import os

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "bench.py")


@pytest.fixture(scope="module")
def bench():
  spec = importlib.util.spec_from_file_location("bench", BENCH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.e2e
def test_bench_prints_table_and_json(bench, capsys):
  pytest.importorskip("torch")  # --torch times the PyTorch reference step; the torch-free install skips only this
  from jaxtickets.core import sparsity  # pylint: disable=g-import-not-at-top
  from jaxtickets.models import layers  # pylint: disable=g-import-not-at-top

  conv, apply_masks = layers.conv3x3_reflect, sparsity.apply_masks
  result = bench.main(["--width", "0.0625", "--size", "16", "--batch", "2", "--steps", "2", "--torch",
                       "--conv_paths", "--pipeline_batches", "2", "--matmul_size", "128", "--runs", "2"])
  out = capsys.readouterr().out
  assert layers.conv3x3_reflect is conv and sparsity.apply_masks is apply_masks  # the patches were undone
  for words in ("mask/dense", "matmul peak", "input pipeline", "PyTorch", "tcmalloc", "adain [SAME + matmul dW]",
                "packing 2 runs", "runs_speedup vmap"):
    assert words in out, words
  line = next(l for l in out.splitlines() if l.startswith("JSON "))
  parsed = json.loads(line[len("JSON "):])
  m = parsed["models"]["adain"]
  for key in ("step_s", "dense_step_s", "masked_over_dense", "flops", "achieved_flops_per_s", "fraction_of_peak"):
    assert math.isfinite(m[key]) and m[key] > 0, key
  assert len(m["step_times"]) == len(m["dense_step_times"]) == 2
  assert parsed["pipeline"]["samples_per_s"] > 0 and parsed["pipeline"]["ratio"] > 0
  assert parsed["torch"]["jax_over_torch"] > 0 and parsed["torch"]["threads"] >= 1
  # PyTorch ran in the same loop as the JAX step: its ratio is the median of the step-by-step ratios.
  assert len(parsed["torch"]["step_times"]) == 2
  pairs = sorted(j / t for j, t in zip(m["step_times"], parsed["torch"]["step_times"]))
  assert parsed["torch"]["jax_over_torch"] == pytest.approx((pairs[0] + pairs[1]) / 2)
  assert set(parsed["conv_paths"]) == {"plain VALID", "SAME", "SAME + matmul dW"}
  assert isinstance(parsed["tcmalloc"]["loaded"], bool)
  # The three conv paths compute the same loss on the same batch and init.
  losses = [p["loss"] for p in parsed["conv_paths"].values()]
  assert max(losses) - min(losses) <= 1e-4 * abs(losses[0])
  assert result["peak_flops_per_s"] >= result["matmul_peak_flops_per_s"]
  packing = parsed["packing"]
  for label in ("vmap", "traced", "auto"):
    assert math.isfinite(packing[f"runs_speedup_{label}"]) and packing[f"runs_speedup_{label}"] > 0, label
  # One CPU device: auto trains one run at a time (never the grouped convolutions of a vmap).
  assert packing["auto_layout"] == {"runs_per_step": 1, "runs_axis": 1, "runs_per_device": 1}
  assert parsed["runs_speedup"] == packing["runs_speedup_auto"]


def test_bench_reports_a_broken_model_and_goes_on(bench, capsys, monkeypatch):
  monkeypatch.setattr(bench, "model_names", lambda: ("adain", "nosuchmodel"))
  monkeypatch.setattr(bench, "bench_model", lambda name, *a, **k: (_ for _ in ()).throw(ValueError("boom"))
                      if name == "nosuchmodel" else {"step_s": 1.0, "images_per_s": 2.0, "flops": 1e9,
                                                     "compile_s": 0.0, "achieved_flops_per_s": 1e9})
  monkeypatch.setattr(bench, "bench_pipeline", lambda args: {"samples_per_s": 1.0, "num_threads": 2, "prefetch": 2,
                                                             "source": "demo", "load_size": 256})
  result = bench.main(["--models=all", "--matmul_size", "64", "--batch", "2"])
  assert result["models"]["nosuchmodel"] == {"error": "ValueError: boom"}
  out = capsys.readouterr().out
  assert "nosuchmodel" in out and "skipped: ValueError: boom" in out
  assert result["pipeline"]["ratio"] == pytest.approx(0.5)  # 1 sample/s against a 2-image, 1 s step
