"""Runs jaxtickets on a multi-host Cloud TPU slice until the run is done, restarting it after preemptions.

  python scripts/launch_tpu.py --name=adain-v5e --zone=us-west4-a --accelerator_type=v5litepod-16 --spot \\
      --config=configs/adain.py --workdir=gs://BUCKET/adain -- --config.train.dtype=bfloat16
  python scripts/launch_tpu.py ... --dry_run      # prints every command, in order, and runs none

What it does, with gcloud (the equivalent commands by hand are in docs/operations.md):
1. the slice: a queued resource NAME with one node NAME (`queued-resources create`), reused when it exists, polled
   with `queued-resources describe` until ACTIVE;
2. the install on every worker (`tpu-vm ssh --worker=all`): this checkout's --ref as a `git archive` copied with
   `tpu-vm scp --worker=all` (or `git clone --repo` at --ref), a Python >= 3.11 virtual environment made with uv
   (the TPU images' Ubuntu 22.04 has 3.10), and `pip install -e ".[tpu,gcs]"`;
3. the launch: the same `python -m jaxtickets.main --config=... --workdir=gs://...` on every worker at once (JAX
   finds the slice's other hosts by itself); a slice has no shared disk, so the workdir must be gs://;
4. the restart loop: the run exits 0 when it is done (report.md written in the workdir), 75 when it saved a
   checkpoint on a preemption notice. Until it exits 0 the script asks for the slice's state: a preempted queued
   resource (SUSPENDING, SUSPENDED, FAILED, PREEMPTED) is deleted and created again, installed again and the same
   command started again; it resumes from the gs:// workdir. A slice still ACTIVE after exit 75 or a dropped
   connection gets the command again; any other exit status stops the script with that status (a bug is not
   retried). --max_restarts bounds the loop.

Nothing but the standard library is imported, so it runs from any Python with gcloud on the PATH.
"""

import argparse
import shlex
import subprocess
import sys
import time

# Cloud TPU's software versions for JAX, by generation (the TPU software versions page of the Cloud TPU docs).
RUNTIME_VERSIONS = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
                    "v5e": "v2-alpha-tpuv5-lite", "v4": "tpu-ubuntu2204-base"}
WAITING = ("ACCEPTED", "CREATING", "WAITING_FOR_RESOURCES", "PROVISIONING")
PREEMPTED = ("SUSPENDING", "SUSPENDED", "FAILED", "PREEMPTED")
EXIT_DONE, EXIT_PREEMPTED, EXIT_SSH = 0, 75, 255  # jaxtickets.main's statuses; ssh's when the connection dropped
REMOTE_DIR = "~/jaxtickets"
ARCHIVE = "jaxtickets-src.tar.gz"


def parse_args(argv: list[str]) -> argparse.Namespace:
  if "--" in argv:  # everything after -- goes to jaxtickets.main unchanged
    argv, extra = argv[:argv.index("--")], argv[argv.index("--") + 1:]
  else:
    extra = []
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", required=True, help="The queued resource's and its TPU node's name.")
  p.add_argument("--zone", required=True, help="A zone that has the accelerator type, e.g. us-west4-a for v5e.")
  p.add_argument("--project", default=None, help="The Google Cloud project (default: gcloud's configured one).")
  p.add_argument("--accelerator_type", required=True, help="e.g. v5litepod-16 (v5e, 4 hosts), v4-32 (4 hosts).")
  p.add_argument("--runtime_version", default=None, help="The TPU software version (default: by generation: "
                 + ", ".join(f"{k} {v}" for k, v in RUNTIME_VERSIONS.items()) + ").")
  p.add_argument("--spot", action="store_true", help="Spot TPUs: cheaper, preemptible at any time.")
  p.add_argument("--create_args", default="", help="More flags for `queued-resources create`, as one string "
                 "(e.g. '--service-account=SA --reserved').")
  p.add_argument("--config", required=True, help="The config, as jaxtickets.main takes it (a path in the repo).")
  p.add_argument("--workdir", required=True, help="gs://BUCKET/PATH: every host reads and writes the same run.")
  p.add_argument("--ref", default="HEAD", help="The git ref of this checkout to install (default HEAD; "
                 "uncommitted changes are not copied).")
  p.add_argument("--repo", default=None, help="Clone this git URL on each worker at --ref instead of copying "
                 "this checkout.")
  p.add_argument("--python", default="3.11", help="The workers' Python version (uv fetches it).")
  p.add_argument("--max_restarts", type=int, default=20, help="Give up after this many restarts.")
  p.add_argument("--poll_seconds", type=int, default=60, help="Seconds between state queries while waiting.")
  p.add_argument("--dry_run", action="store_true", help="Print every command in order; run none.")
  args = p.parse_args(argv)
  args.main_args = extra
  return args


def usage_problem(args: argparse.Namespace) -> str | None:
  """The one sentence that refuses these arguments, or None."""
  if not args.workdir.startswith("gs://"):
    return (f"--workdir={args.workdir} is not on Cloud Storage, and a TPU slice's hosts share no disk: give a "
            "gs://BUCKET/PATH workdir (pip's .[gcs] extra reads it).")
  if args.runtime_version is None and runtime_version(args.accelerator_type) is None:
    return (f"--accelerator_type={args.accelerator_type} has no known TPU software version: pass "
            "--runtime_version (see the Cloud TPU docs' TPU software versions).")
  if any(a.startswith("--workdir") for a in args.main_args):
    return "--workdir after -- would give the hosts another workdir than the script's: pass it once, before --."
  return None


def runtime_version(accelerator_type: str) -> str | None:
  generation = accelerator_type.rsplit("-", 1)[0]
  return RUNTIME_VERSIONS.get(generation)


# ----------------------------------------------------------------------------- the commands


def _where(args) -> list[str]:
  return ["--zone", args.zone] + (["--project", args.project] if args.project else [])


def describe(args) -> list[str]:
  return ["gcloud", "compute", "tpus", "queued-resources", "describe", args.name, *_where(args),
          "--format=value(state.state)"]


def create(args) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", args.name, *_where(args),
         "--node-id", args.name, "--accelerator-type", args.accelerator_type,
         "--runtime-version", args.runtime_version or runtime_version(args.accelerator_type)]
  return cmd + (["--spot"] if args.spot else []) + shlex.split(args.create_args)


def delete(args) -> list[str]:
  # --force deletes the node first; --quiet answers gcloud's prompt.
  return ["gcloud", "compute", "tpus", "queued-resources", "delete", args.name, *_where(args), "--force", "--quiet"]


def on_all_workers(args, command: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), "--worker=all",
          f"--command={command}"]


def archive(args) -> list[str]:
  return ["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", args.ref]


def copy_archive(args) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "scp", ARCHIVE, f"{args.name}:{ARCHIVE}", *_where(args),
          "--worker=all"]


def install_script(args, ref: str) -> str:
  """The shell each worker runs to install: the source at `ref`, a venv, the package with its TPU and GCS extras."""
  if args.repo:
    source = (f"(test -d {REMOTE_DIR}/.git || git clone --quiet {shlex.quote(args.repo)} {REMOTE_DIR}) && "
              f"cd {REMOTE_DIR} && git fetch --quiet origin && git checkout --quiet --detach {shlex.quote(ref)}")
  else:
    # The old source goes (a file deleted at --ref must not linger), the virtual environment stays.
    source = (f"mkdir -p {REMOTE_DIR} && find {REMOTE_DIR} -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {{}} + "
              f"&& tar -xzf ~/{ARCHIVE} -C {REMOTE_DIR} && cd {REMOTE_DIR}")
  return " && ".join([
      "set -e",
      source,
      "(command -v uv >/dev/null || python3 -m pip install --quiet --user uv)",
      "export PATH=$HOME/.local/bin:$PATH",
      f"uv venv --quiet --allow-existing --python {shlex.quote(args.python)} .venv",
      "uv pip install --quiet --python .venv/bin/python -e '.[tpu,gcs]'",
  ])


def main_command(args) -> str:
  """The command every worker runs: the same on each (JAX's TPU detection gives each its process id)."""
  cmd = [".venv/bin/python", "-m", "jaxtickets.main", f"--config={args.config}", f"--workdir={args.workdir}",
         *args.main_args]
  return f"cd {REMOTE_DIR} && " + shlex.join(cmd)


def install_commands(args, ref: str) -> list[list[str]]:
  copy = [] if args.repo else [copy_archive(args)]
  return copy + [on_all_workers(args, install_script(args, ref))]


# ----------------------------------------------------------------------------- running them


class Gcloud:
  """Runs commands, echoing each one; `dry_run` prints them instead."""

  def __init__(self, dry_run: bool = False, out=sys.stdout):
    self.dry_run, self.out = dry_run, out

  def say(self, text: str) -> None:
    print(text, file=sys.stderr if text.startswith("error:") else self.out, flush=True)

  def run(self, cmd: list[str]) -> int:
    self.say(("" if self.dry_run else "+ ") + shlex.join(cmd))
    return 0 if self.dry_run else subprocess.run(cmd).returncode

  def output(self, cmd: list[str]) -> tuple[int, str]:
    if self.dry_run:
      self.say(shlex.join(cmd))
      return 0, ""
    done = subprocess.run(cmd, capture_output=True, text=True)
    return done.returncode, done.stdout.strip()


def slice_state(args, gcloud: Gcloud) -> str | None:
  """The queued resource's state, or None when it does not exist."""
  rc, out = gcloud.output(describe(args))
  return (out.splitlines() or ["UNKNOWN"])[-1] if rc == 0 else None


def bring_up(args, gcloud: Gcloud, sleep=time.sleep) -> int:
  """Creates the slice unless it exists, waits until it is ACTIVE; 0, or the failing command's status."""
  if gcloud.dry_run:
    gcloud.run(describe(args))
    gcloud.say("# when it does not exist (deleted first when it is one of " + ", ".join(PREEMPTED) + "):")
    gcloud.run(create(args))
    gcloud.say(f"# then every {args.poll_seconds} s until it says ACTIVE:")
    gcloud.run(describe(args))
    return 0
  state = slice_state(args, gcloud)
  if state in PREEMPTED:
    gcloud.say(f"The queued resource {args.name} is {state}: deleting it to create it again.")
    if (rc := gcloud.run(delete(args))) != 0:
      return rc
    state = None
  if state is None:
    if (rc := gcloud.run(create(args))) != 0:
      return rc
  elif state != "ACTIVE":
    gcloud.say(f"Reusing the queued resource {args.name} ({state}).")
  while True:
    state = slice_state(args, gcloud)
    if state == "ACTIVE":
      return 0
    if state in PREEMPTED or state is None:
      gcloud.say(f"error: the queued resource {args.name} went {state or 'missing'} while waiting for it.")
      return 1
    gcloud.say(f"{args.name}: {state}; asking again in {args.poll_seconds} s.")
    sleep(args.poll_seconds)


def supervise(args, gcloud: Gcloud, ref: str, sleep=time.sleep) -> int:
  """Brings the slice up, installs, launches, and restarts after preemptions until the run exits 0."""
  if not args.repo:
    if gcloud.dry_run:
      gcloud.say(f"# 0. this checkout at {args.ref}, to copy to the workers")
    if gcloud.run(archive(args)) != 0:
      return 1
  if gcloud.dry_run:
    gcloud.say("# 1. the slice: reuse the queued resource if it exists, else create it; wait until it is ACTIVE")
  restarts, fresh = 0, True
  while True:
    if fresh:  # a new (or newly found) slice: create or wait for it, then install
      if (rc := bring_up(args, gcloud, sleep)) != 0:
        return rc
      if gcloud.dry_run:
        gcloud.say("# 2. install on every worker")
      for cmd in install_commands(args, ref):
        if (rc := gcloud.run(cmd)) != 0:
          gcloud.say(f"error: the install failed on the slice with exit status {rc}.")
          return rc
    if gcloud.dry_run:
      gcloud.say("# 3. the same command on every worker")
    rc = gcloud.run(on_all_workers(args, main_command(args)))
    if gcloud.dry_run:
      gcloud.say("# 4. until it exits 0: exit 75 or a lost connection on an ACTIVE slice runs step 3 again; a "
                 f"preempted slice ({', '.join(PREEMPTED)}) is deleted and steps 1-3 run again:")
      gcloud.run(delete(args))
      return 0
    if rc == EXIT_DONE:
      gcloud.say(f"The run is done: {args.workdir}/report.md")
      return 0
    state = slice_state(args, gcloud)
    if state == "ACTIVE" and rc not in (EXIT_PREEMPTED, EXIT_SSH):
      gcloud.say(f"error: the run exited with status {rc} on an ACTIVE slice: not a preemption, so not restarted.")
      return rc
    restarts, fresh = restarts + 1, state != "ACTIVE"
    if restarts > args.max_restarts:
      gcloud.say(f"error: still not done after {args.max_restarts} restarts; run the script again to go on.")
      return EXIT_PREEMPTED
    gcloud.say(f"The run stopped (exit status {rc}, slice {state or 'missing'}): restart {restarts} of at most "
               f"{args.max_restarts}.")


def main(argv: list[str]) -> int:
  args = parse_args(argv)
  problem = usage_problem(args)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  ref = args.ref
  if not args.repo and not args.dry_run:
    done = subprocess.run(["git", "rev-parse", "--verify", f"{args.ref}^{{commit}}"], capture_output=True, text=True)
    if done.returncode != 0:
      print(f"error: --ref={args.ref} is not a commit of this checkout: give a branch, tag or commit.", file=sys.stderr)
      return 2
    ref = done.stdout.strip()
  return supervise(args, Gcloud(dry_run=args.dry_run), ref)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
