"""What a command line can end in besides success, and the one runner that turns each into its exit status.

  UserError   bad input (a flag, a path, a file, a config value): its message is one sentence naming the thing and
              the fix; the command prints `error: <sentence>` and exits with USAGE_EXIT (2), as for a bad flag.
  Stopped     a run that saved its work and stopped (a preemption, Ctrl-C): the command says how to resume (the
              same command again) and exits with the stop's own status (75, or 130 after Ctrl-C).
"""

import os
import shlex
import sys

USAGE_EXIT = 2


class UserError(ValueError):
  """A problem the user can fix (a path, a config value, a file); the command prints it without a traceback."""


class ConfigError(UserError):
  """A mistake in the config (validation's sentences, every problem listed before anything compiles)."""


class Stopped(Exception):
  """Work stopped after saving itself; the same command resumes it."""
  exit_code = 75


def run_command(work, module: str, argv=()):
  """Runs a command line's `work()` and returns what it returns; a UserError ends in its one sentence on stderr
  (exit 2), a Stopped in the resume hint (its exit status). `module` names the command in the hint; `argv` is absl's,
  whose words after the program's name are a mistake (every setting is a flag)."""
  try:
    if len(argv) > 1:
      raise UserError(f"Unexpected arguments: {' '.join(argv[1:])}: give every setting as a --flag.")
    return work()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT)
  except Stopped as e:
    command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), "-m", module, *sys.argv[1:]])
    print(f"{e} To resume, run the same command again: {command}", flush=True)
    sys.exit(e.exit_code)
