"""A service that fails while it starts (a bug, or skypty's files replaced
under a running host) is told to a control-socket client as a failure,
with its reason, not as a bare hang-up the client would blame on the peer."""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from skypty.host.connection import HostConnectionFactory
from skypty.host.auth import IPtyAvatar
from skypty.keys import SecretKey
from skypty.wire import requestline


class AcceptingPortal:
    def login(self, credentials, mind, interface):
        return defer.succeed((IPtyAvatar, object(), lambda: None))


def connect(route, entry_point):
    pk = SecretKey.generate().public_key
    factory = HostConnectionFactory(AcceptingPortal(), entry_point, {requestline.PROXY: route},
                                    lambda transport: pk, Clock(), reject_with_byte=True)
    conn = factory.buildProtocol(None)
    transport = StringTransport()
    conn.makeConnection(transport)
    conn.dataReceived(requestline.encode_request(requestline.proxy_uri(pk.hex(), 22)))
    return transport


def broken_install(avatar, query, conn):
    raise ModuleNotFoundError("No module named 'skypty.host.proxy'")


def test_a_route_that_raises_is_a_reasoned_failure_on_the_control_socket():
    transport = connect(broken_install, "cli")
    reply = transport.value()
    assert reply[:1] == requestline.REJECT
    text = reply[2:2 + reply[1]].decode()
    assert text == "failed: No module named 'skypty.host.proxy'"


def test_a_route_that_raises_is_a_bare_close_for_foreign_clients():
    transport = connect(broken_install, "dmsg")
    assert transport.value() == b"" and transport.disconnecting
