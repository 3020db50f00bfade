"""scripts/pods_table.py: the protocol's columns worked out from a kept row, and the table written into its page."""

import importlib.util
import json
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "pods_table.py")


@pytest.fixture()
def pods(tmp_path, monkeypatch):
  spec = importlib.util.spec_from_file_location("pods_table", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  monkeypatch.setattr(module, "ROWS", str(tmp_path))
  monkeypatch.setattr(module, "PAGE", str(tmp_path / "pods.md"))
  return module


def test_a_row_renders_its_cost_from_the_schedule(pods, tmp_path):
  row = {"model": "adain", "topology": "v5e:4x4", "chips": 16, "hbm_bytes": 16 << 30, "peak_flops": 197e12,
         "runs_per_step": 4, "mesh": [4, 4], "peak_bytes": 1 << 30, "flops": 900e9, "collectives": {"all-reduce": 2},
         "compile_seconds": 200}
  json.dump(row, open(pods.row_path("adain", "v5e:4x4"), "w"))
  # By hand: 3 replicates, 10 rounds of 160,000 steps, IMP and random pruning, 4 slots: the dense pack, 10 IMP packs
  # (with one baseline beside rounds 2-10), then the 30 - 9 = 21 baselines left in 6 packs: 17 packs.
  packed = 17 * 160_000
  hours = packed * 900e9 / 197e12 / 3600
  got = pods.render()
  line = next(l for l in got.splitlines() if l.startswith("| adain | v5e:4x4 |"))
  assert f"| {packed:,} (93% busy) | 4 of 4 | 3 |" in line  # 63 trainings in 68 slots
  assert f"{hours:,.1f} hours, {hours * 16:,.1f} chip-h | {hours / 0.4:,.1f} hours" in line
  assert "| 1.00 GiB (6.2%) | 900 | all-reduce x2 |" in line
  assert "Not compiled yet: sanet on v5e:4x4" in got and "Where auto packing left" not in got
  json.dump({**row, "topology": "v4:2x2x2", "chips": 8, "layout_why": "one run did not fit: VMEM"},
            open(pods.row_path("adain", "v4:2x2x2"), "w"))
  assert "- adain on v4:2x2x2: one run did not fit: VMEM." in pods.render()


def test_write_replaces_the_table_between_the_markers_only(pods, tmp_path, monkeypatch):
  page = tmp_path / "pods.md"
  page.write_text(f"intro\n{pods.BEGIN}\nold table\n{pods.END}\nafter\n")
  monkeypatch.setattr("sys.argv", ["pods_table.py", "render", "--write"])
  pods.main()
  text = page.read_text()
  assert text.startswith(f"intro\n{pods.BEGIN}\n| model |") and text.endswith(f"{pods.END}\nafter\n")
  assert "old table" not in text
