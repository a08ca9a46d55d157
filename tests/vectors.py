"""The reference implementation's golden vectors (../shared/vectors beside the checkout)."""

import json
import os

DIR = os.environ.get("SKYPTY_VECTORS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "vectors")


def load(name):
    with open(os.path.join(DIR, name)) as f:
        return json.load(f)
