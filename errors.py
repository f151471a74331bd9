"""User-facing errors. Every message says what went wrong and what to do."""


class FaceRefineError(Exception):
    """Base class: adapters show ``str(err)`` to the user instead of a traceback."""


class WeightsNotFoundError(FaceRefineError, FileNotFoundError):
    pass


class WeightsFormatError(FaceRefineError, ValueError):
    """Corrupt, truncated, unsafe (pickled code) or unreadable weights file."""


class WrongArchitectureError(FaceRefineError, ValueError):
    pass


class DownloadError(FaceRefineError, OSError):
    pass


class ImageInputError(FaceRefineError, ValueError):
    pass


class NoFaceError(FaceRefineError, ValueError):
    pass


class OutputError(FaceRefineError, OSError):
    """An output cannot be written where asked (read-only folder, a file where a folder is needed, full disk...)."""
