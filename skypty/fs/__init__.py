"""``skypty-client fs``: a host's files mounted over SFTP with FUSE.

Layers, innermost first: ``inodes`` (pure: inode numbers <-> remote paths),
``errors`` (pure: SFTP status -> errno), ``link`` (Twisted: one SFTP session
that reconnects, with per-request timeouts), ``files`` (Twisted: read-ahead
and write-behind on an open file), ``operations`` (llfuse's callbacks, each
a blocking call into the reactor) and ``mount`` (the process: background,
signals, unmount).
"""
