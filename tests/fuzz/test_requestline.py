"""Fuzz: the pty request line (RequestLineParser, parse_uri, parse_proxy_query)."""

from hypothesis import example, given, strategies as st

from skypty.wire.requestline import (
    MAX_URI, PROXY, PROXY_SERVICES, RequestLineError, RequestLineParser, encode_request, parse_proxy_query,
    parse_uri, proxy_uri,
)
from tests.fuzz import fuzz, only

PK = "02" + "ab" * 32


def chunked(data, sizes):
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if sizes else len(data)
        yield data[pos:pos + n]
        pos, i = pos + n, i + 1


uri_text = st.text(st.sampled_from("/?&=#[]:*%.@ vxdmsgpty0123456789abcdefABCDEF\x00\x04\t\r\n\x7f"), max_size=40)


@fuzz(250)
@given(st.one_of(st.binary(max_size=600), uri_text.map(lambda u: bytes((len(u),)) + u.encode())),
       st.lists(st.integers(1, 64), max_size=8))
# urlsplit raised ValueError from parse_uri, after the parser had accepted the line:
@example(b"\x04///[", [])
@example(b"\x08///[*:1]", [])        # a '*:1' bracketed host
@example(b"\x0a///[vg.x]/", [])      # an invalid IPvFuture host
@example(b"\x0a///[v1.x]/", [])      # a valid one: parses
@example(b"\x05///[]", [1])
@example(b"\xff" + b"a" * 300, [7])  # longest line, then pipelined bytes
def test_request_line(data, sizes):
    parser = RequestLineParser()
    fed = b""
    with only(RequestLineError):
        for chunk in chunked(data, sizes):
            fed += chunk
            uri, leftover = parser.feed(chunk)
            assert len(parser._buf) <= 1 + MAX_URI
            if uri is not None:
                assert len(uri) == fed[0] <= MAX_URI
                assert fed[1:1 + len(uri)] + leftover == fed[1:]
                path, query = parse_uri(uri)  # a line the parser accepted always routes
                assert isinstance(path, str) and all(isinstance(v, str) for v in query.values())
                if path == PROXY:
                    with only(RequestLineError):
                        parse_proxy_query(query)
                break


@fuzz(200)
@given(st.text(max_size=300))
@example("dmsgpty/proxy?pk=" + PK + "&port=%C2%B2")  # isdigit() took '²', then int() raised ValueError
def test_parse_uri_and_proxy_query(uri):
    with only(RequestLineError):
        path, query = parse_uri(uri)
        pk, port, service = parse_proxy_query(query)
        assert len(pk) == 66 and 0 < port < 65536 and service in PROXY_SERVICES.values()


@fuzz(200)
@given(st.dictionaries(st.sampled_from(["pk", "port", "service", "x"]),
                       st.one_of(st.text(max_size=70), st.sampled_from([PK, PK.upper(), "22", "0", "65536", "²",
                                                                        "١", "sftp", "pty"]))))
@example({"pk": PK, "port": "١"})  # an Arabic-Indic one: isdigit() and int() both took it, as port 1
def test_proxy_query_only_takes_ascii_ports(query):
    with only(RequestLineError):
        pk, port, service = parse_proxy_query(query)
        assert query["port"].isascii() and str(port) == query["port"].lstrip("0")
        assert pk == query["pk"].lower()


@fuzz(200)
@given(st.text(st.characters(max_codepoint=127), max_size=MAX_URI), st.lists(st.integers(1, 40), max_size=5))
def test_round_trip(uri, sizes):
    try:
        wire = encode_request(uri)
        parse_uri(uri)
    except RequestLineError:
        return  # not a URI a client may send
    parser = RequestLineParser()
    got = None
    for chunk in chunked(wire + b"rest", sizes):
        got = parser.feed(chunk)
        if got[0] is not None:
            break
    assert got[0] == uri


@fuzz(100)
@given(st.integers(1, 65535), st.sampled_from(sorted(PROXY_SERVICES)), st.booleans())
def test_proxy_uri_round_trip(port, service, upper):
    pk = PK.upper() if upper else PK
    path, query = parse_uri(proxy_uri(pk, port, service))
    assert path == PROXY and parse_proxy_query(query) == (PK, port, PROXY_SERVICES[service])
