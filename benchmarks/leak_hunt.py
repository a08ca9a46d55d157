"""Object growth per round of shells, inside one host process.

    python3 benchmarks/leak_hunt.py [--rounds 6] [--shells 200]

Runs a HostService in this process's reactor; a client thread opens N
shells over the Noise TCP port and closes them again, round after round;
after each round the reactor thread counts live Python objects by type
(after gc). Types that grew by more than 20 between rounds are printed: an
empty list every round means no object leaks, whatever RSS does (the
allocator keeps freed arenas).
"""

import argparse
import collections
import gc
import json
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--shells", type=int, default=200)
    args = ap.parse_args()

    from twisted.internet import reactor, threads

    from skypty.config import generate_config_data, load_config
    from skypty.host.service import HostService
    from tests.hosts import free_port, wait_for

    tmp = tempfile.mkdtemp(prefix="skypty-leak-")
    data = generate_config_data(cli_address=os.path.join(tmp, "pty.sock"), ssh_listen=f"127.0.0.1:{free_port()}",
                                web_listen=None, discovery_port=free_port(), server_port=free_port())
    path = os.path.join(tmp, "skywire-config.json")
    with open(path, "w") as f:
        json.dump(data, f)
    config = load_config(path)
    host = HostService(config, reactor=reactor)
    host.startService()

    def counts():
        gc.collect()
        return collections.Counter(type(o).__name__ for o in gc.get_objects())

    def rounds():
        from skypty.client.rpc import BlockingRPC, request_service
        from skypty.client.transport import connect_noise
        from skypty.wire import types as T

        port = config.pty.ssh_listen.port
        wait_for(lambda: bool(threads.blockingCallFromThread(reactor, lambda: host.dmsg.sessions)),
                 what="the dmsg session")
        previous = None
        for n in range(args.rounds):
            channels = []
            for _ in range(args.shells):
                c = connect_noise("127.0.0.1", port, config.pk, config.sk)
                BlockingRPC(c, request_service(c, "dmsgpty/pty")).call(
                    "pty.Start", T.CommandReq.cls(name="sh"), T.CommandReq, T.EMPTY)
                channels.append(c)
            for c in channels:
                c.close()
            wait_for(lambda: not threads.blockingCallFromThread(reactor, lambda: host.portal.live.keys()),
                     what="every login to end")
            time.sleep(1)  # a measuring script, not a test: let the last children be reaped
            now = threads.blockingCallFromThread(reactor, counts)
            if previous is not None:
                grown = sorted(((k, now[k] - previous[k]) for k in now if now[k] - previous[k] > 20),
                               key=lambda kv: -kv[1])
                print(f"round {n + 1}: types grown by more than 20 objects: {grown[:15]}", flush=True)
            previous = now
        reactor.callFromThread(reactor.stop)

    threading.Thread(target=rounds, daemon=True).start()
    reactor.run()


if __name__ == "__main__":
    main()
