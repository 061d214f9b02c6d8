"""Provider-looking identifiers (`chatcmpl-...`, `resp_...`, `msg_01...`, `req_...`).

They are random, not secret: they only need to be unique and shaped like the real ones.
"""

from __future__ import annotations

import os

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def base62(length: int) -> str:
    number = int.from_bytes(os.urandom(length))  # 8 bits per digit: more than enough entropy
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(digits)


def hex_id(length: int) -> str:
    return os.urandom((length + 1) // 2).hex()[:length]
