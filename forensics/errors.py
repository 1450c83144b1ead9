"""The toolkit's own error types.

Every input problem the toolkit detects raises one of these, with a message that names the parameter or
file, what is allowed and what was received. Callers (the CLI, the panels, a pipeline) can catch
``ForensicsError`` and know that the message is meant for a person.
"""

from __future__ import annotations


class ForensicsError(Exception):
    """Base class of every error raised on purpose by the toolkit."""


class InputError(ForensicsError, ValueError):
    """Input that cannot be used as given: wrong shape, length, type, value or file."""


class IntegrityError(ForensicsError):
    """Stored state that does not match what it claims to be: a checksum, a hash chain, a dataset hash."""


class UnsafeFileError(ForensicsError):
    """A file that would need code execution to read (a pickle) or that exceeds a safety bound."""
