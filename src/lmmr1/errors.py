"""User-facing errors.

Every problem a user can fix (a bad path, a bad config, a bad data row) is raised as
``LmmR1Error`` with a one-line message that says what is wrong *and* what to do.  The CLI
prints these as ``error: ...`` without a traceback; anything else is a bug in lmmr1.
"""

from __future__ import annotations


class LmmR1Error(Exception):
    """An error the user can fix; its message is one line that names the fix."""


class ModelLoadError(LmmR1Error):
    """A model directory cannot be loaded as-is."""


class InputError(LmmR1Error):
    """A prompt/message/image given to the processor or sampler is invalid."""
