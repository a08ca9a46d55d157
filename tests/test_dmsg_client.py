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


# -- why a dial failed, told apart (#26 item 1, #22 mixed mesh) -----------------------------------

class FakeSession:
    """A session whose streams end as *outcome* says, at once."""

    def __init__(self, outcome):
        from twisted.internet.testing import StringTransport

        self.outcome = outcome
        self.remote_pk = generate_keypair()[0]
        self.transport = StringTransport()  # up: a session being closed is waited for, not dialled

    def open_stream(self, stream, window=None):
        from skypty.dmsg.session import DmsgError
        from skypty.dmsg.stream import StreamRefusedError

        kind, code = self.outcome
        if kind == "refused":
            err = StreamRefusedError(f"refused (code {code})")
            err.code = code
            stream.done.errback(err)
        elif kind == "timeout":
            stream.timed_out = True
            stream.done.errback(DmsgError("did not answer within 8s"))
        else:
            stream.done.errback(DmsgError("the server closed the stream unanswered"))
        return defer.succeed(stream)


def _dial_outcome(outcome):
    from skypty.dmsg.disc import client_entry

    clock = task.Clock()
    svc = client(clock)
    session = FakeSession(outcome)
    svc.sessions = {session.remote_pk: session}
    peer, _ = generate_keypair()
    entry = client_entry(peer, 0, 0, [session.remote_pk])
    results = []
    svc._dial_entry(entry, peer, 23, None).addBoth(results.append)
    (failure,) = results
    return peer, failure.value


import pytest  # noqa: E402


@pytest.mark.parametrize("outcome, reason, said", [
    (("refused", 306), "refused", "refused the stream: nothing listens on its dmsg port 23 (check --port)"),
    (("refused", 303), "peer-error", "refused the stream on dmsg port 23: the request is for another key"),
    (("refused", 0), "peer-error", "refused the stream on dmsg port 23: refused without a reason"),
    (("timeout", None), "timeout", "did not answer in time"),
    (("closed", None), "no-answer", "did not answer over dmsg (it stopped, or lost its dmsg session)"),
])
def test_a_refusal_a_peer_error_a_timeout_and_no_route_are_told_apart(outcome, reason, said):
    from skypty.client.errors import proxy_refusal

    peer, err = _dial_outcome(outcome)
    assert err.reason == reason
    line = proxy_refusal(err.reason, str(err), peer.hex(), 23)
    assert said in line, line
    assert line.count(peer.hex()) == 1


def test_a_closed_request_after_the_servers_window_counts_as_a_timeout():
    """A skypty server closes an unanswered request when its 5 s window ends;
    that is a timeout, not "no server has a session to the peer"."""
    from skypty.dmsg.client import _Dial
    from skypty.dmsg.session import STREAM_HANDSHAKE_TIMEOUT

    clock = task.Clock()
    for waited, timed_out in ((0.01, False), (STREAM_HANDSHAKE_TIMEOUT, True)):
        stream = _Dial.__new__(_Dial)
        stream._reactor, stream._sent_at, stream.timed_out = clock, clock.seconds(), False
        stream.done = defer.Deferred()
        stream.done.addErrback(lambda _: None)
        stream.dst_pk = generate_keypair()[0]
        clock.advance(waited)
        try:
            stream.connectionLost()
        except Exception:  # the base class's own bookkeeping of a stream never opened
            pass
        assert stream.timed_out is timed_out


# -- a session lost with its link comes back at once, and dials wait for it (#23) -----------------

class LiveSession:
    def __init__(self, pk):
        from twisted.internet.testing import StringTransport

        self.remote_pk = pk
        self.transport = StringTransport()
        self.streams = []

    def open_stream(self, stream, window=None):
        self.streams.append(stream)
        stream.done.callback("connected")
        return defer.succeed(stream)


def _reconnecting_client(clock):
    """A client that had a session to one server (its address known), and
    whose discovery is behind the same dead link (every call hangs)."""
    svc = client(clock)
    svc.discovery.available_servers = lambda: defer.Deferred()
    svc.discovery.get_entry = lambda pk: defer.Deferred()
    server = generate_keypair()[0]
    svc._server_addresses[server] = "10.0.0.1:8081"
    attempts = []
    link = {"up": False}

    def open_session(pk, address, timeout):
        attempts.append((clock.seconds(), address, timeout))
        if not link["up"]:
            return task.deferLater(clock, timeout, lambda: "timed out")
        session = LiveSession(pk)
        svc.sessions[pk] = session
        svc._lost_servers.pop(pk, None)
        for waiter in svc._session_waiters.pop(pk, []):
            waiter.callback(None)
        return defer.succeed(None)

    svc._open_session = open_session
    svc.running = True
    return svc, server, attempts, link


def test_a_lost_session_is_reconnected_to_the_same_server_once_a_second_without_discovery():
    from skypty.dmsg.client import RECONNECT_TRY

    clock = task.Clock()
    svc, server, attempts, link = _reconnecting_client(clock)
    old = LiveSession(server)
    svc.sessions[server] = old
    svc._lost(old)
    clock.pump([0.5] * 20)  # 10 s of a dead link
    assert [a for _, a, _ in attempts] == ["10.0.0.1:8081"] * len(attempts)
    assert 9 <= len(attempts) <= 11  # a fresh SYN about every second, not TCP's 1, 3, 7, 15 s
    assert all(timeout == RECONNECT_TRY for _, _, timeout in attempts)
    link["up"] = True
    clock.advance(RECONNECT_TRY)
    assert svc.sessions[server] is not old  # back within a second of the link
    n = len(attempts)
    clock.pump([1] * 5)
    assert len(attempts) == n  # and no more attempts


def test_a_dial_waits_for_a_lost_session_to_come_back_instead_of_failing():
    from skypty.dmsg.disc import client_entry

    clock = task.Clock()
    svc, server, attempts, link = _reconnecting_client(clock)
    old = LiveSession(server)
    svc.sessions[server] = old
    old.transport.disconnecting = True  # a failed probe is closing it: not yet gone from sessions
    peer = generate_keypair()[0]
    results = []
    svc._dial_entry(client_entry(peer, 0, 0, [server]), peer, 22, None).addBoth(results.append)
    svc._lost(old)
    clock.pump([0.5] * 12)
    assert results == []  # still waiting: the link is down
    link["up"] = True
    clock.pump([0.5] * 3)
    assert results == ["connected"] and len(svc.sessions[server].streams) == 1


def test_a_dialled_peer_entry_is_reused_while_discovery_is_out_of_reach():
    from skypty.dmsg.disc import client_entry
    from skypty.dmsg.errors import DiscoveryUnavailable

    clock = task.Clock()
    svc = client(clock)
    peer = generate_keypair()[0]
    entry = client_entry(peer, 0, 0, [])
    svc._peer_entries[peer] = (entry, clock.seconds())
    clock.advance(600)  # long past PEER_ENTRY_TTL
    svc.discovery.get_entry = lambda pk: defer.fail(DiscoveryError("discovery unreachable"))
    got = []
    svc._peer_entry(peer).addBoth(got.append)
    assert got == [(entry, True)]
    svc._peer_entries.clear()
    svc._peer_entry(peer).addBoth(got.append)
    assert got[-1].check(DiscoveryUnavailable)
