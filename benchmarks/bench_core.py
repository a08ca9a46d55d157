"""Protocol-core throughput: Noise transport frames and gob pty.Read replies.

    python3 benchmarks/bench_core.py
"""

import os
import time

from skypty.wire.noise import MAX_PLAINTEXT, FrameDecoder, FrameEncoder
from skypty.wire import gob
from skypty.wire import types as T


def best_of(n, fn):
    return min(fn() for _ in range(n))


def noise(total=64 * 1024 * 1024):
    key = os.urandom(32)
    data = os.urandom(MAX_PLAINTEXT)
    frames = total // MAX_PLAINTEXT

    def run():
        enc, dec = FrameEncoder(key), FrameDecoder(key)
        start = time.perf_counter()
        for _ in range(frames):
            dec.receive(enc.encrypt(data))
        return time.perf_counter() - start

    seconds = best_of(3, run)
    return frames * MAX_PLAINTEXT / seconds / 1e6


def gob_reads(count=2000):
    payload = os.urandom(64 * 1024)
    header = T.Response.cls(service_method="pty.Read", seq=1)

    def encode():
        enc = gob.Encoder()
        start = time.perf_counter()
        for i in range(count):
            enc.encode(header, T.Response)
            enc.encode(payload, T.BYTES)
        return time.perf_counter() - start

    enc = gob.Encoder()
    stream = b"".join(enc.encode(header, T.Response) + enc.encode(payload, T.BYTES) for _ in range(count))

    def decode():
        dec = gob.Decoder()
        start = time.perf_counter()
        dec.feed(stream)
        for _ in range(count):
            dec.next_value(T.Response)
            dec.next_value(T.BYTES)
        return time.perf_counter() - start

    te, td = best_of(3, encode), best_of(3, decode)
    size = count * len(payload)
    return size / te / 1e6, count / te, size / td / 1e6, count / td


if __name__ == "__main__":
    print(f"noise encrypt+decrypt, full {MAX_PLAINTEXT}-byte frames: {noise():.0f} MB/s")
    e_mb, e_n, d_mb, d_n = gob_reads()
    print(f"gob encode pty.Read reply (Response + 64 KiB []byte): {e_mb:.0f} MB/s, {e_n:.0f} replies/s")
    print(f"gob decode pty.Read reply (Response + 64 KiB []byte): {d_mb:.0f} MB/s, {d_n:.0f} replies/s")
