"""A blocking net/rpc client on a channel, for the command line."""

import select

from skypty.client.transport import TransportError
from skypty.wire import requestline
from skypty.wire.rpc import RPCClientConnection, RPCError


class RejectedError(TransportError):
    pass


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
                                "(this key is not on its whitelist, or it cannot serve the request)")
    if answer[:1] != requestline.ACCEPT:
        raise RejectedError("not authorized: the host rejected the request "
                            "(this key is not on its whitelist)")
    return answer[1:]  # anything the host pipelined behind the accept byte


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
            ready, _, _ = select.select([self.channel], [], [], timeout)
            if not ready:
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
