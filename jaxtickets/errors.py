"""The one exception type for bad user input: its message is a single sentence naming the thing and the fix."""


class UserError(ValueError):
  """A problem the user can fix (a path, a config value, a file); main prints it without a traceback."""
  exit_code = 1


class ConfigError(UserError):
  """A mistake in the config (validation's sentences): commands exit with status 2 for it, as for a bad flag."""
  exit_code = 2
