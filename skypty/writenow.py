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
    if (data and isinstance(transport, FileDescriptor) and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport.dataBuffer and not transport._tempDataLen):
        written = transport.writeSomeData(data)
        if isinstance(written, int) and written > 0:
            if written == len(data):
                return
            data = data[written:]
        # 0, or an exception (connection lost): the queued path finds it out
    transport.write(data)
