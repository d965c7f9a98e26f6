"""The errors users see as one line (`vggpipe ...: error: <message>`, exit 2).

They live here, below every other module, so that the CLI, the Jobs API client
and the stages raise the same classes without importing each other.
"""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option): printed as one line."""


class ConfigError(UserError, ValueError):
    """A config value is out of its allowed range; the message names the field.

    Also a ValueError, so that Python callers that validate their own input the
    usual way catch it."""
