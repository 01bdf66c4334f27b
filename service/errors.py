"""The project's own exceptions: one small hierarchy under :class:`DecoupleError`.

The store, the workers and the CLI raise these; the API maps each class to one HTTP status in a
single place (``service.api.install_error_handlers``), so no route decides a status code by hand.
Messages are written for the person who reads them: they name the thing that is wrong and, where
there is one, the command that fixes it.
"""

from __future__ import annotations


class DecoupleError(Exception):
    """Base class: an error with a message a user can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class CliError(Exception):
    """An error the user can act on at the command line; ``decouple`` prints it as one line and
    exits with status 2 (``service.cli``)."""


class NotFound(DecoupleError):
    """The study, trial or token asked for does not exist."""


class Unauthorized(DecoupleError):
    """No token, or a token that is unknown or revoked, where auth is required."""


class Forbidden(DecoupleError):
    """Authenticated, but not allowed: only the owner or an admin may cancel or delete."""


class Conflict(DecoupleError):
    """The request clashes with the current state (e.g. cancelling a finished study)."""


class InvalidInput(DecoupleError):
    """A request value the schemas could not catch on their own; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class PayloadTooLarge(DecoupleError):
    """A request body above the API's size limit."""


class DatabaseUnavailable(DecoupleError):
    """The database cannot be reached (down, restarting, locked for too long)."""


class SchemaOutOfDate(DecoupleError):
    """The database schema is behind the code: run `decouple migrate`."""
