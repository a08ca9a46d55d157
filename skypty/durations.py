"""Durations as people write them: '30s', '5m', '1h', '250ms', or a bare
number of seconds.

A module of its own (no attrs, no config loader) so that the client parses
``--timeout`` without importing skypty.config: that import alone was ~30 ms
of every one-shot ``exec``.
"""

from skypty.errors import SkyptyError

_UNITS = (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600))  # "ms" before "s" and "m"


class DurationError(SkyptyError):
    pass


def parse_duration(value, key="duration", error=DurationError):
    """*value* -> float seconds; anything else raises *error* naming *key*."""
    if isinstance(value, bool):
        raise error(f"{key}: expected a duration such as 30s or 5m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        seconds = _seconds(str(value))
        if seconds is None:
            raise error(f"{key}: expected a duration such as 30s or 5m, got {value!r}")
    if seconds < 0:
        raise error(f"{key}: must not be negative")
    return seconds


def _seconds(text):
    """NUMBER[UNIT] with optional spaces around and between (what the regex
    \\s*(\\d+(?:\\.\\d+)?)\\s*(ms|s|m|h)?\\s* takes), or None.  By hand: compiling
    that regex was ~0.4 ms of every exec, which always parses --timeout."""
    text = text.strip()
    factor = 1
    for unit, unit_factor in _UNITS:
        if text.endswith(unit):
            text, factor = text[:-len(unit)].rstrip(), unit_factor
            break
    whole, dot, fraction = text.partition(".")
    if not whole.isdecimal() or (dot and not fraction.isdecimal()):
        return None
    return float(text) * factor
