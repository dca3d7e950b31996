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


def utf8_text(raw: bytes, where: str, error: type[LmmR1Error] = LmmR1Error) -> str:
    """``raw`` decoded as UTF-8 (a byte-order mark allowed), or ``error`` naming ``where:line`` and
    the offending byte: a file saved in another encoding is a fix for the user, not a traceback."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise error(f"{where}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8") from None
