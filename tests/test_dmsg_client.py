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
