"""Wire codecs: gob, net/rpc, yamux and the pty request line (sans-I/O)."""

