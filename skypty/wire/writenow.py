"""Write to a Twisted transport at once when nothing is queued on it.

Twisted's ``FileDescriptor.write`` never writes in the caller's turn: it
queues the bytes, asks the reactor to watch for writability and writes them
in the next reactor iteration.  For an interactive shell that is one extra
reactor iteration (two ``epoll_ctl`` calls and the dispatch around them) for
every keystroke written to the pty and for every RPC reply, on the path the
user waits on.  ``write_now`` makes the one ``send``/``write`` itself when the
transport's queue is empty, and hands whatever the kernel did not take
(and anything at all when bytes are already queued, which keeps the order)
to ``transport.write`` as before.
"""

from twisted.internet.abstract import FileDescriptor


def write_now(transport, data):
    # The queue lives in FileDescriptor's private attributes; should a Twisted
    # release rename them, the getattr defaults turn the fast path off.
    if (data and isinstance(transport, FileDescriptor) and transport.connected
            and not transport.disconnecting and not getattr(transport, "_writeDisconnected", True)
            and not getattr(transport, "dataBuffer", True) and not getattr(transport, "_tempDataLen", True)):
        written = transport.writeSomeData(data)
        if isinstance(written, int) and written > 0:
            if written == len(data):
                return
            data = data[written:]
        # 0, or an exception (connection lost): the queued path finds it out
    transport.write(data)
