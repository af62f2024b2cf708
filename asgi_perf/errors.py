"""Exceptions asgi_perf raises to its users."""

from __future__ import annotations


class ConfigError(ValueError):
    """An option, environment variable or budgets file is invalid.

    The message always names the option (or file and key) at fault, so a
    misconfigured app fails at start-up with something a person can act on.
    """


class EngineUnavailable(RuntimeError):
    """A profiling engine cannot run here.

    Its package is missing (the message names the pip command), or the
    system refuses it, like py-spy without ptrace permission (the message
    says how to allow it).
    """
