"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """A mistake or an unavailable resource that the user must fix; never shown as a traceback."""


class ModelFileError(UserError):
    """The model file is missing, unreadable, or lacks the imgbatch metadata contract."""
