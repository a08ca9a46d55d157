"""Fuzz: the SFTP replies the client parses (skypty.fs.replies) and the
protocol that uses them (skypty.fs.link.SFTPClientProtocol).

Properties: hostile bytes parse or raise BadReply (nothing else), never
more than MAX_NAMES entries come out of one NAME reply, what conch's packer
writes parses back to the same attributes, and at the protocol a request
answered by any bytes is settled (a result, or one of the documented
failures), never left waiting and never raised into the reactor.
"""

import struct

from hypothesis import example, given, strategies as st
from twisted.conch.ssh import filetransfer as fx
from twisted.internet import defer

from skypty.fs import replies
from skypty.fs.errors import LinkDown
from skypty.fs.link import SFTPClientProtocol
from tests.fuzz import fuzz, only
from tests.fuzz.strategies import edits, mutate

u32 = st.integers(0, 2**32 - 1)
attrs_dicts = st.fixed_dictionaries({}, optional={
    "size": st.integers(0, 2**64 - 1), "uid": u32, "gid": u32, "permissions": u32, "atime": u32, "mtime": u32})
names = st.binary(max_size=40)


def pack_attrs(attrs):
    """conch's packer: uid/gid and the times go as pairs."""
    if "uid" in attrs and "gid" not in attrs or "atime" in attrs and "mtime" not in attrs:
        return None
    return fx.FileTransferBase._packAttributes(None, attrs)


def ns(b):
    return struct.pack("!L", len(b)) + b


def name_reply(rid, entries):
    return struct.pack("!LL", rid, len(entries)) + b"".join(
        ns(n) + ns(long) + fx.FileTransferBase._packAttributes(None, a) for n, long, a in entries)


paired = attrs_dicts.filter(lambda a: ("uid" in a) == ("gid" in a) and ("atime" in a) == ("mtime" in a))
entries = st.lists(st.tuples(names, names, paired), max_size=6)


@fuzz(300)
@given(st.binary(max_size=400))
@example(b"\x00\x00\x00\x01\xff\xff\xff\xff")  # 4 billion names in 8 bytes
@example(b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\xff\xff")  # a name longer than the reply
@example(b"\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x80\x00\x00\x00\x7f\xff\xff\xff")
def test_name_reply_from_any_bytes(data):
    with only(replies.BadReply):
        rid, found = replies.parse_name(data)
        assert len(found) <= replies.MAX_NAMES
        assert all(isinstance(n, bytes) and isinstance(a, dict) for n, _, a in found)


@fuzz(200)
@given(u32, entries, edits)
def test_name_reply_round_trips_and_survives_mutation(rid, listed, mutation):
    data = name_reply(rid, listed)
    assert replies.parse_name(data) == (rid, listed)
    with only(replies.BadReply):
        replies.parse_name(mutate(data, mutation))


@fuzz(300)
@given(st.binary(max_size=200))
@example(b"\x80\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\x00\x00\x00\x00")  # non-ASCII ext name
@example(b"\x80\x00\x00\x00\xff\xff\xff\xff")
def test_attrs_from_any_bytes(data):
    with only(replies.BadReply):
        attrs, pos = replies.parse_attrs(data)
        assert 4 <= pos <= len(data)
        assert all(isinstance(k, str) for k in attrs)


@fuzz(200)
@given(paired, edits)
def test_attrs_round_trip_with_conchs_packer(attrs, mutation):
    data = pack_attrs(attrs)
    assert replies.parse_attrs(data) == (attrs, len(data))
    with only(replies.BadReply):
        replies.parse_attrs(mutate(data, mutation))


@fuzz(200)
@given(st.binary(max_size=120))
@example(b"\x00\x00\x00\x01\x00\x00\x00\x04\x00\x00\x00\x02\xc3\xbc")  # a non-ASCII message (conch raised)
def test_status_from_any_bytes(data):
    with only(replies.BadReply):
        rid, code, message, lang = replies.parse_status(data)
        assert isinstance(message, bytes) and isinstance(lang, bytes)


class _Transport:
    def __init__(self):
        self.aborted = False

    def write(self, data):
        pass

    def abortConnection(self):
        self.aborted = True


@fuzz(300)
@given(st.sampled_from([fx.FXP_NAME, fx.FXP_ATTRS, fx.FXP_STATUS, fx.FXP_HANDLE]), st.binary(max_size=300),
       st.booleans())
@example(fx.FXP_STATUS, b"\x00\x00\x00\x04\x00\x00\x00\x03\x00\x00\x00\x02\xc3\xbc", False)
@example(fx.FXP_NAME, b"\x00\x00\x00\xff\x00\x00\x00\x01", False)  # cut short
@example(fx.FXP_NAME, b"\x00\x00\x00\x00", True)  # for an id never asked
def test_a_pending_request_is_always_settled(kind, body, other_id):
    """Whatever the host answers to request 255: that request is settled
    (or, for an id never asked, nothing happens) and nothing escapes."""
    client = SFTPClientProtocol()
    client.transport = _Transport()
    client.connected = True
    asked = defer.Deferred()
    client.openRequests[255] = asked
    rid = 7 if other_id else 255
    packet = struct.pack("!LB", 1 + 4 + len(body), kind) + struct.pack("!L", rid) + body
    outcome = []
    asked.addCallbacks(lambda r: outcome.append(("ok", r)), lambda f: outcome.append(("failed", f)))
    client.dataReceived(packet)
    if other_id:
        assert outcome == [] and 255 in client.openRequests
        return
    assert len(outcome) == 1, "the request was left waiting"
    if outcome[0][0] == "failed":
        failure = outcome[0][1]
        assert failure.check(LinkDown, EOFError, NotImplementedError, fx.SFTPError), failure
        if failure.check(LinkDown):
            assert client.transport.aborted
