"""The reference implementation's golden vectors, kept in tests/vectors/ (see its README)."""

import json
import os

DIR = os.environ.get("SKYPTY_VECTORS") or os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors")


def load(name):
    with open(os.path.join(DIR, name)) as f:
        return json.load(f)
