"""Durations as people write them: '30s', '5m', '1h', '250ms', or a bare
number of seconds.

A module of its own (no attrs, no config loader) so that the client parses
``--timeout`` without importing skypty.config: that import alone was ~30 ms
of every one-shot ``exec``.
"""

import re

from skypty.errors import SkyptyError

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


class DurationError(SkyptyError):
    pass


def parse_duration(value, key="duration", error=DurationError):
    """*value* -> float seconds; anything else raises *error* naming *key*."""
    if isinstance(value, bool):
        raise error(f"{key}: expected a duration such as 30s or 5m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.fullmatch(str(value))
        if not match:
            raise error(f"{key}: expected a duration such as 30s or 5m, got {value!r}")
        seconds = float(match.group(1)) * _UNIT[match.group(2) or "s"]
    if seconds < 0:
        raise error(f"{key}: must not be negative")
    return seconds
