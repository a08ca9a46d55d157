
import pytest
from hypothesis import given, strategies as st

from skypty.wire.requestline import (
    ACCEPT, REJECT, RequestLineError, RequestLineParser, encode_request, match, parse_proxy_query,
    parse_uri, proxy_uri,
)
from tests.vectors import load

V = load("pty_request_line.json")
CASES = V["local_cli_endpoint"] + V["dmsg_endpoint"]


@pytest.mark.parametrize("case", CASES, ids=[c["case"] for c in CASES])
def test_vector_request_lines(case):
    wire = bytes.fromhex(case["client_writes"])
    assert encode_request(case["uri"]) == wire
    uri, leftover = RequestLineParser().feed(wire)
    assert (uri, leftover) == (case["uri"], b"")
    reply = bytes.fromhex(case["host_replies"]) if case["host_replies"] else b""
    assert reply in (ACCEPT, REJECT, b"")


def test_proxy_uri_round_trip():
    pk = V["keys"]["client_A"]["pk"]
    uri = proxy_uri(pk, 22)
    path, query = parse_uri(uri)
    assert path == "dmsgpty/proxy" and parse_proxy_query(query) == (pk, 22, "dmsgpty/pty")
    path, query = parse_uri(proxy_uri(pk, 22, service="sftp"))
    assert parse_proxy_query(query) == (pk, 22, "dmsgpty/sftp")
    for bad in ({"pk": "zz", "port": "22"}, {"pk": pk, "port": "0"}, {"pk": pk},
                {"pk": pk, "port": "22", "service": "whitelist"}):
        with pytest.raises(RequestLineError):
            parse_proxy_query(bad)


def test_leading_slash_and_matching():
    assert parse_uri("/dmsgpty/pty")[0] == "dmsgpty/pty"
    assert match("dmsgpty/pty", ["dmsgpty/whitelist", "dmsgpty/pty"]) == "dmsgpty/pty"
    assert match("dmsgpty/pty/x", ["dmsgpty/*"]) is None
    assert match("dmsgpty/other", ["dmsgpty/pty"]) is None


def test_uri_limits():
    encode_request("a" * 255)
    with pytest.raises(RequestLineError):
        encode_request("a" * 256)
    with pytest.raises(RequestLineError):
        encode_request("é")


def test_pipelined_bytes_are_left_over():
    parser = RequestLineParser()
    assert parser.feed(b"\x0bdmsg") == (None, b"")
    assert parser.feed(b"pty/ptyRPC") == ("dmsgpty/pty", b"RPC")


@given(st.binary(max_size=600), st.integers(1, 50))
def test_hostile_input_is_bounded(data, step):
    parser = RequestLineParser()
    try:
        for i in range(0, len(data), step):
            uri, _ = parser.feed(data[i:i + step])
            assert len(parser._buf) <= 256
            if uri is not None:
                assert len(uri) <= 255
                break
    except RequestLineError:
        pass


@pytest.mark.parametrize("line", [b"\x04///[", b"\x08///[*:1]", b"\x0a///[vg.x]/"])
def test_unparseable_uri_is_refused_by_the_parser(line):
    # urlsplit's ValueError escaped parse_uri, after the parser had handed the URI to routing
    with pytest.raises(RequestLineError, match="does not parse"):
        RequestLineParser().feed(line)
    with pytest.raises(RequestLineError):
        parse_uri(line[1:].decode())


@pytest.mark.parametrize("port", ["%C2%B2", "%D9%A1", "+22", " 22", "022222"])
def test_proxy_port_is_ascii_digits(port):
    pk = V["keys"]["client_A"]["pk"]
    _, query = parse_uri(f"dmsgpty/proxy?pk={pk}&port={port}")
    with pytest.raises(RequestLineError, match="port"):
        parse_proxy_query(query)
