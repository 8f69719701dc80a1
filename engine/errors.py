"""One small error hierarchy for the whole engine.

Every message says what happened, to which file or layer, and what to do about it.
Callers catch :class:`StreamSlideError` for anything the engine raises on purpose.
"""

from __future__ import annotations


class StreamSlideError(Exception):
    """Base class of every error the engine raises deliberately."""


class NotStreamableError(StreamSlideError, ValueError):
    """A trunk contains a layer that is not local, so tiles could not be stitched exactly.

    Raised when a :class:`engine.streaming.StreamingModule` is built (or run, if a layer
    was switched to training mode later). The message names the layer and the fix.
    """


class TileSizeError(StreamSlideError, ValueError):
    """The requested tile is too small for the trunk's receptive field, or no tile fits a budget."""


class SlideError(StreamSlideError):
    """A slide could not be opened or read."""


class SlideOpenError(SlideError):
    """The file is missing, unreadable, truncated or in a format OpenSlide does not support."""


class SlideReadError(SlideError):
    """The slide opened but reading a region failed (corrupt tile data, or the handle died)."""


class RegionError(SlideError, ValueError):
    """A region request is out of bounds, at a level the slide lacks, or too large to allocate."""


class CheckpointError(StreamSlideError):
    """A model file is missing, truncated, tampered with, unsafe, or does not match its architecture."""


class Cancelled(StreamSlideError):
    """A job stopped because its cancel token was set; finished work was kept."""


class LabelsError(StreamSlideError, ValueError):
    """A labels CSV or class-folder tree is malformed; the message names the file and line."""


class TrainingError(StreamSlideError):
    """Training could not go on: repeated non-finite losses or gradients, or a resume that does not fit."""


class RunFolderError(TrainingError):
    """A training run's folder holds another run (neither resume nor overwrite was asked for), or a
    resume asks for what the saved run cannot give (another model, optimiser or data); the
    message lists what differs and the ways on."""


class SpecError(StreamSlideError, ValueError):
    """A job spec asks for something impossible (an unknown option, a value out of range); the
    message names the field, the value and the choices."""


class ResultsError(StreamSlideError, OSError):
    """A file could not be written or read (disk full, read-only folder, unreadable or foreign file).

    Also an OSError: a failed write raised a bare OSError before :mod:`engine.io.atomic` named
    the file and the cause, and callers that catch OSError must still catch it.
    """


class EmptyMaskError(StreamSlideError, ValueError):
    """A mask with no cell inside for some image (a head's pool, a global-pool reducer, a streamed
    pass whose every block is skipped): there is nothing to pool or to compute."""
