"""The host's dmsg client upkeep on a Clock: what it logs and how it backs off."""

from twisted.internet import defer, task

from skypty.config import parse_config
from skypty.dmsg.client import RETRY_MAX, DmsgClientService
from skypty.dmsg.disc import DiscoveryError
from skypty.keys import generate_keypair


class Log:
    def __init__(self):
        self.lines = []

    def __getattr__(self, level):
        return lambda fmt, **kw: self.lines.append((level, fmt.format(**kw)))


class FakeDiscovery:
    def __init__(self):
        self.mode = "down"
        self.calls = 0

    def available_servers(self):
        self.calls += 1
        if self.mode == "down":
            return defer.fail(DiscoveryError("discovery at http://d.example unreachable: refused"))
        return defer.succeed([])


def client(clock):
    _, sk = generate_keypair()
    svc = DmsgClientService(clock, parse_config({"sk": sk.hex(), "dmsg": {"discovery": "http://d.example"}}))
    svc.discovery = FakeDiscovery()
    svc.log = Log()
    return svc


def delays(clock, svc, rounds):
    out = []
    for _ in range(rounds):
        out.append(svc._call.getTime() - clock.seconds())
        clock.advance(out[-1])
    return out


def test_no_servers_yet_is_said_once_and_retried_with_backoff():
    clock = task.Clock()
    svc = client(clock)
    svc.discovery.mode = "empty"
    svc.startService()
    clock.advance(0)
    assert delays(clock, svc, 8) == [1, 2, 4, 8, 16, 32, 60, 60]
    assert svc.log.lines == [("info", "dmsg discovery at http://d.example lists no dmsg servers yet; "
                                      "waiting for one")]
    assert svc.discovery.calls == 9
    svc.stopService()
    clock.advance(3600)
    assert svc.discovery.calls == 9 and not clock.getDelayedCalls()


def test_each_change_of_state_is_logged_once():
    clock = task.Clock()
    svc = client(clock)
    svc.startService()
    clock.advance(0)
    delays(clock, svc, 5)
    svc.discovery.mode = "empty"
    delays(clock, svc, 5)
    svc.discovery.mode = "down"
    delays(clock, svc, 3)
    levels = [level for level, _ in svc.log.lines]
    texts = [text for _, text in svc.log.lines]
    assert levels == ["warn", "info", "warn"]  # no server yet is normal at start: info
    assert "unavailable" in texts[0] and "unreachable: refused" in texts[0]
    assert "lists no dmsg servers yet" in texts[1] and "unavailable" in texts[2]
    assert max(delays(clock, svc, 10)) == RETRY_MAX


def test_a_peer_entry_is_reused_for_a_while_and_refetched_when_stale():
    from skypty.dmsg import client as dmsg_client
    from skypty.dmsg.disc import client_entry
    from skypty.dmsg.errors import NoAnswer

    clock = task.Clock()
    svc = client(clock)
    peer, _ = generate_keypair()
    fetches, dials = [], []
    svc.discovery.get_entry = lambda pk: fetches.append(pk) or defer.succeed(client_entry(pk, 0, 0, []))
    outcomes = iter(["ok", "ok", NoAnswer("stale"), "ok", "ok"])

    def dial_entry(entry, pk, port, inner):
        dials.append(pk)
        outcome = next(outcomes)
        return defer.fail(outcome) if isinstance(outcome, Exception) else defer.succeed(outcome)

    svc._dial_entry = dial_entry
    results = []
    svc.dial(peer, 22, None).addBoth(results.append)
    svc.dial(peer, 22, None).addBoth(results.append)
    assert len(fetches) == 1 and results == ["ok", "ok"]  # one discovery round trip for both
    svc.dial(peer, 22, None).addBoth(results.append)  # the cached entry fails: fetched again, retried
    assert len(fetches) == 2 and results[-1] == "ok" and len(dials) == 4
    clock.advance(dmsg_client.PEER_ENTRY_TTL + 1)
    svc.dial(peer, 22, None).addBoth(results.append)
    assert len(fetches) == 3 and results[-1] == "ok"


def test_a_proxy_relay_back_pressures_both_ways():
    from twisted.internet.testing import StringTransport

    from skypty.dmsg.client import Relay

    class Remote:
        def __init__(self):
            self.transport = StringTransport()

        def attach(self, sink, on_lost):
            self.sink = sink

    remote = Remote()
    relay = Relay(remote)
    local = StringTransport()
    relay.makeConnection(local)
    assert local.producer is remote.transport and remote.transport.producer is local
    remote.sink(b"x" * 10)  # the peer's bytes reach the local client
    assert local.value() == b"x" * 10
