"""What the user can fix: the UserError exception, and telling a full disk from a bug.

The CLI maps `UserError` and a full disk to exit code 2 and a single line on stderr; anything else is
a bug (exit code 1, traceback with --debug).
"""

from __future__ import annotations

import errno
import re


class UserError(Exception):
    """Bad input: a recipe, data file, path or flag the user can correct. The message is one line."""


DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# The same failures as the writers that do not raise OSError word them: safetensors (Rust) and torch.save
# (its zip writer, which loses the errno: "unexpected pos N vs M" / "failed writing file").
DISK_FULL_TEXT = re.compile(
    r"(No space left on device|Disk quota exceeded|File too large) \(os error \d+\)"
    r"|inline_container\.cc.*(unexpected pos \d+ vs \d+|failed writing file)"
)


def disk_full(err: BaseException | None) -> str | None:
    """Why `err` (or an exception it was raised from) is a full disk, or None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError):
            if err.errno in DISK_FULL_ERRNOS:
                return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
        elif match := DISK_FULL_TEXT.search(str(err)):
            return match.group(1) or "a checkpoint file could not be written"
        err = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    return None
