"""Errors a user can cause. The CLI prints their message on one line and exits 2."""


class EdgeAssistError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class SourceError(EdgeAssistError):
    """A frame source cannot be opened or read."""


class EndOfStream(Exception):
    """A finite source (file, cine, folder) has delivered its last frame."""


class BackendError(EdgeAssistError):
    """An inference backend is unavailable or a model does not fit it."""


class ManifestError(EdgeAssistError):
    """engines/manifest.json is missing, malformed or does not match a model."""
