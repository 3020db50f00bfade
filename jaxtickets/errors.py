"""The one exception type for bad user input: its message is a single sentence naming the thing and the fix."""


class UserError(ValueError):
  """A problem the user can fix (a path, a config value, a file); main prints it without a traceback."""
