"""The one error a user sees as a single line.

Library code raises a subclass of :class:`OmniLVError` for bad input, a bad config or a bad environment, with a
message that says what was wrong, where, and what to do. ``omnilv/cli.py`` catches this class, and only this
class, in one place: it prints the message and exits with status 2. Every other exception keeps its traceback, so
a bug is never disguised as a user error.
"""

from __future__ import annotations


class OmniLVError(Exception):
    """A problem the user can fix (input, config, environment); its message is written for them."""
