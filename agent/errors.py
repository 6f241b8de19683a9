"""Errors that end a command with one clear line instead of a traceback."""


class AgentError(Exception):
    """A failure the user can act on; the CLI prints it as one line."""

    exit_code = 1


class ConfigError(AgentError):
    """Invalid or unreadable configuration (exit status 2)."""

    exit_code = 2
