"""A blocking net/rpc client on a channel, for the command line."""


from skypty.client.transport import TransportError, wait_for_fd
from skypty.wire import requestline
from skypty.wire.rpc import RPCClientConnection, RPCError


class RejectedError(TransportError):
    """The host said no.  *closed*: it closed without a byte (a Noise TCP host
    refusing a stranger, a reference host's failed proxy); else it sent the
    reject byte, and *reason*/*text* are what a skypty host added behind it
    (empty from others).  Callers know the context and reword it."""

    def __init__(self, message, closed=False, reason="", text=""):
        super().__init__(message)
        self.closed, self.reason, self.text = closed, reason, text


REASON_WAIT = 2.0  # how long a reason may trail the reject byte


def request_service(channel, uri):
    """Send the request line; return once the host accepted (else raise)."""
    channel.send(requestline.encode_request(uri))
    answer = b""
    while not answer:
        try:
            answer = channel.recv()
        except ConnectionResetError:
            answer = b""  # a Noise TCP host drops a stranger without a word
        except OSError as e:
            raise TransportError(f"connection failed: {e.strerror or e}") from None
        if not answer:
            raise RejectedError("not authorized: the host closed the connection "
                                "(this key is not on its whitelist, or it cannot serve the request)",
                                closed=True)
    if answer[:1] != requestline.ACCEPT:
        rest = _rest_of_reason(channel, answer[1:])
        reason, text = requestline.parse_rejection(rest)
        raise RejectedError(f"the host refused {uri}" + (f": {text}" if text else ""),
                            reason=reason, text=text)
    return answer[1:]  # anything the host pipelined behind the accept byte


def _rest_of_reason(channel, data):
    """A skypty host sends one length byte and that many bytes after the
    reject byte; read until we have them, EOF, or REASON_WAIT."""
    import time

    deadline = time.monotonic() + REASON_WAIT
    while not data or len(data) < 1 + data[0]:
        left = deadline - time.monotonic()
        if left <= 0 or not (getattr(channel, "pending", lambda: False)()
                             or wait_for_fd(channel, left)):
            break
        try:
            more = channel.recv()
        except OSError:
            break
        if not more:
            break
        data += more
    return data


class BlockingRPC:
    def __init__(self, channel, early=b""):
        self.channel = channel
        self.core = RPCClientConnection()
        self.results = {}
        self._early = early

    def start(self, method, arg, arg_type, reply_type):
        seq, data = self.core.start_call(method, arg, arg_type, reply_type)
        self.channel.send(data)
        return seq

    def feed(self, data):
        for seq, value in self.core.data_received(data):
            self.results[seq] = value

    def pump(self, timeout=None):
        """Read once from the channel (waiting up to *timeout*); False at EOF."""
        if self._early:
            data, self._early = self._early, b""
            self.feed(data)
            return True
        pending = getattr(self.channel, "pending", lambda: False)()
        if not pending and timeout is not None:
            if not wait_for_fd(self.channel, timeout):
                return True
        data = self.channel.recv()
        if not data:
            return False
        self.feed(data)
        return True

    def wait(self, seq):
        while seq not in self.results:
            try:
                alive = self.pump()
            except OSError as e:
                raise TransportError(f"connection failed: {e.strerror or e}") from None
            if not alive:
                raise TransportError("the host closed the connection")
        value = self.results.pop(seq)
        if isinstance(value, RPCError):
            raise value
        return value

    def call(self, method, arg, arg_type, reply_type):
        return self.wait(self.start(method, arg, arg_type, reply_type))
