"""scripts/launch_tpu.py: the commands it runs on a TPU slice, in order, and its restart loop after preemptions."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "launch_tpu.py")
ARGS = ["--name=adain-v5e", "--zone=us-west4-a", "--accelerator_type=v5litepod-16", "--spot",
        "--config=configs/adain.py", "--workdir=gs://bucket/adain"]
MAIN = ".venv/bin/python -m jaxtickets.main --config=configs/adain.py --workdir=gs://bucket/adain"

spec = importlib.util.spec_from_file_location("launch_tpu", SCRIPT)
launch_tpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(launch_tpu)


def _run(*argv):
  return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=60, cwd=ROOT)


@pytest.mark.e2e
def test_dry_run_prints_the_whole_multi_host_sequence():
  run = _run(*ARGS, "--dry_run", "--", "--config.train.dtype=bfloat16")
  assert run.returncode == 0, run.stderr
  lines = [l for l in run.stdout.splitlines() if not l.startswith("#")]
  def index(*parts):
    found = [k for k, l in enumerate(lines) if all(p in l for p in parts)]
    assert found, (parts, run.stdout)
    return found[0]
  create = index("queued-resources create adain-v5e", "--node-id adain-v5e", "--accelerator-type v5litepod-16",
                 "--runtime-version v2-alpha-tpuv5-lite", "--spot")
  first_describe = index("queued-resources describe adain-v5e", "value(state.state)")
  scp = index("tpu-vm scp", "--worker=all")
  install = index("tpu-vm ssh adain-v5e", "--worker=all", "pip install", "-e", ".[tpu,gcs]")
  launch = index("tpu-vm ssh adain-v5e", "--worker=all", MAIN + " --config.train.dtype=bfloat16")
  delete = index("queued-resources delete adain-v5e", "--force")
  assert index("git archive") < first_describe < create < scp < install < launch < delete
  assert sum("jaxtickets.main" in l for l in lines) == 1  # one command, on every worker at once
  assert "steps 1-3 run again" in run.stdout  # the restart loop, shown once


@pytest.mark.e2e
def test_a_local_workdir_is_refused_in_one_sentence():
  run = _run(*[a for a in ARGS if not a.startswith("--workdir")], "--workdir=runs/adain", "--dry_run")
  assert run.returncode == 2 and run.stdout == ""
  assert run.stderr.startswith("error: --workdir=runs/adain") and "gs://" in run.stderr
  assert len(run.stderr.strip().splitlines()) == 1


class FakeGcloud(launch_tpu.Gcloud):
  """Answers each command from a script of states and exit statuses; records what ran."""

  def __init__(self, states, launches):
    super().__init__(dry_run=False, out=open(os.devnull, "w"))
    self.states, self.launches, self.ran = list(states), list(launches), []

  def _kind(self, cmd):
    text = " ".join(cmd)
    for kind in ("describe", "create", "delete", "scp", "archive"):
      if f" {kind} " in f" {text} ":
        return kind
    return "launch" if "jaxtickets.main" in text else "install"

  def run(self, cmd):
    kind = self._kind(cmd)
    self.ran.append(kind)
    return self.launches.pop(0) if kind == "launch" else 0

  def output(self, cmd):
    self.ran.append("describe")
    state = self.states.pop(0)
    return (1, "") if state is None else (0, state)


def _args():
  return launch_tpu.parse_args(ARGS + ["--poll_seconds=0"])


def test_a_preempted_slice_is_recreated_reinstalled_and_the_run_started_again():
  fake = FakeGcloud(states=[None, "WAITING_FOR_RESOURCES", "ACTIVE",  # created, waited for
                            "SUSPENDED", "SUSPENDED", "PROVISIONING", "ACTIVE"],  # preempted: recreated
                    launches=[75, 0])
  assert launch_tpu.supervise(_args(), fake, "abc123", sleep=lambda s: None) == 0
  assert fake.ran == ["archive", "describe", "create", "describe", "describe", "scp", "install", "launch",
                      "describe", "describe", "delete", "create", "describe", "describe", "scp", "install", "launch"]
  assert not fake.states and not fake.launches


def test_exit_75_on_a_live_slice_relaunches_without_reinstalling_and_a_failure_is_not_retried():
  fake = FakeGcloud(states=["ACTIVE"] * 4, launches=[75, 1])
  assert launch_tpu.supervise(_args(), fake, "abc123", sleep=lambda s: None) == 1
  assert fake.ran == ["archive", "describe", "describe", "scp", "install", "launch", "describe", "launch",
                      "describe"]


def test_restarts_are_bounded():
  args = launch_tpu.parse_args(ARGS + ["--max_restarts=2"])
  fake = FakeGcloud(states=["ACTIVE"] * 5, launches=[75, 75, 75])
  assert launch_tpu.supervise(args, fake, "abc123", sleep=lambda s: None) == 75
  assert fake.ran.count("launch") == 3


def test_the_install_checks_out_the_ref_when_cloning():
  args = launch_tpu.parse_args(ARGS + ["--repo=https://example.com/jaxtickets.git"])
  script = launch_tpu.install_script(args, "abc123")
  assert "git clone --quiet https://example.com/jaxtickets.git" in script and "checkout --quiet --detach abc123" in script
  assert launch_tpu.install_commands(args, "abc123")[0][4] == "ssh"  # nothing to copy
  assert launch_tpu.runtime_version("v4-32") == "tpu-ubuntu2204-base"
  assert "--runtime_version" in launch_tpu.usage_problem(launch_tpu.parse_args(
      [a.replace("v5litepod-16", "v9x-8") for a in ARGS]))
