"""The typed errors of l2l-jax. Library code raises these; only the programs' entry points (`l2l_jax.programs.flags`)
turn them into a one-line message and an exit status.

Every message names the file or flag at fault and says what to do, so the entry point can print it as it is.
"""

from __future__ import annotations


class L2LError(Exception):
    """Base class: a problem with the user's input (a flag, a file, a dataset, weights), not a bug."""


class ConfigError(L2LError, ValueError):
    """A flag or config-file setting is invalid, or settings contradict each other."""


class WeightsError(L2LError, ValueError):
    """Weights named by the user cannot be found, read, or do not fit the model."""


class NonFiniteLossError(L2LError, RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving the bad state."""


def first_line(e: BaseException) -> str:
    """The first line of `e`'s message (its type's name when it has none): the part a one-line error quotes."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


__all__ = ["ConfigError", "L2LError", "NonFiniteLossError", "WeightsError", "first_line"]
