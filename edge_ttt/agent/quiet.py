"""A warning when the agent is subscribed and no sensor message comes. Devices that publish under
another prefix or topic template, or a broker whose ACL lets the agent subscribe but not read,
look the same from the agent: connected, healthy, idle. mosquitto accepts a wildcard subscription
the client may not read and drops every message on it without a word, so nothing else says it.
"""

from __future__ import annotations


class QuietWatch:
    """Time subscribed without a single message; said once per run (`after_s` 0: never).

    >>> w = QuietWatch(after_s=60.0)
    >>> w.update(subscribed=True, messages=0, now=0.0), w.update(True, 0, 30.0), w.update(True, 0, 61.0)
    (None, None, 61.0)
    >>> w.update(True, 0, 200.0) is None  # said once
    True
    >>> w = QuietWatch(60.0)
    >>> w.update(True, 0, 0.0), w.update(False, 0, 50.0), w.update(True, 0, 70.0), w.update(True, 0, 125.0)
    (None, None, None, None)
    >>> w.update(True, 1, 200.0) is None  # a message came: nothing to say, ever
    True
    """

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._since: float | None = None  # subscribed (again) at
        self._done = after_s <= 0

    def update(self, subscribed: bool, messages: int, now: float) -> float | None:
        """Seconds subscribed without a message when it is time to say so, else None."""
        self._done = self._done or messages > 0
        if self._done:
            return None
        if not subscribed:
            self._since = None
            return None
        if self._since is None:
            self._since = now
        if now - self._since < self.after_s:
            return None
        self._done = True
        return now - self._since
