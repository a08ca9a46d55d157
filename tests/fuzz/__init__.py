"""Fuzz targets for every decoder a peer can reach (see docs/reliability.md).

Each target is a hypothesis test: a short bounded run inside the normal
suite, and a long run with ``SKYPTY_FUZZ=long`` (many more examples, no
deadline; ``SKYPTY_FUZZ_EXAMPLES=N`` sets the count per target).

The property everywhere: hostile bytes either decode or raise the module's
ProtocolError subclass, internal buffers stay under their documented caps,
and where there is an encoder, decode(encode(x)) == x.
"""

import contextlib
import os

from hypothesis import HealthCheck, reject, settings

LONG = os.environ.get("SKYPTY_FUZZ") == "long"
LONG_FACTOR = 100

settings.register_profile(
    "skypty-fuzz", deadline=None, print_blob=True,
    # the machine is shared and slow: never fail a target for being slow
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "skypty-fuzz-long", deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fuzz(examples):
    """Settings for one target: *examples* in the suite (keep it to ~1-2 s),
    LONG_FACTOR times that (or SKYPTY_FUZZ_EXAMPLES) in a long run."""
    if LONG:
        n = int(os.environ.get("SKYPTY_FUZZ_EXAMPLES") or examples * LONG_FACTOR)
        return settings(settings.get_profile("skypty-fuzz-long"), max_examples=n)
    return settings(settings.get_profile("skypty-fuzz"), max_examples=examples)


class KnownDefect:
    """An open defect in a module another engineer owns: *exc_type* raised
    in one of *functions* (the innermost Python frame of the traceback).

    Targets skip inputs that hit it (so the suite stays green while it is
    open); its own ``xfail(strict=True)`` test reproduces it, and turns red
    the day it is fixed, so the entry and the marker get removed together."""

    def __init__(self, name, exc_type, *functions):
        self.name, self.exc_type, self.functions = name, exc_type, functions

    def matches(self, exc):
        if not isinstance(exc, self.exc_type):
            return False
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and tb.tb_frame.f_code.co_name in self.functions

    def __repr__(self):
        return f"KnownDefect({self.name})"


@contextlib.contextmanager
def only(*allowed, known=()):
    """Let *allowed* exceptions end the input quietly; an input hitting one of
    the *known* open defects is rejected; anything else fails the target."""
    try:
        yield
    except allowed:
        pass
    except Exception as e:
        if any(d.matches(e) for d in known):
            reject()
        raise
