"""A "classic host" double: a real `twistd skypty` process that answers only
what a reference host from before 2026 answers (PROTOCOL.md section 9).

* the pty service has pty.Start/Read/Write/SetPtySize/Stop only;
* the whitelist service has whitelist.* only (no host.Peers, no host.WebURL);
* its control socket's dmsgpty/proxy is the reference's RPC-level proxy: it
  dials the peer and serves the same five classic methods, forwarding each
  call, so a skypty extension called through it gets "can't find method"
  even when the peer behind it is a full skypty host.

It is the real host with a different route table, installed before twistd
builds the service (see ClassicHost._start): no switch in the product.
"""

import subprocess
import sys

from tests.hosts import Host, env

CLASSIC_PTY = ("pty.Start", "pty.Read", "pty.Write", "pty.SetPtySize", "pty.Stop")
CLASSIC_WHITELIST = ("whitelist.Whitelist", "whitelist.WhitelistAdd", "whitelist.WhitelistRemove")


def install():
    from skypty.host import gateway
    from skypty.wire import requestline
    from skypty.wire.rpc import RPCServerProtocol

    full_routes = gateway.routes_for

    def classic(methods, names):
        return {name: m for name, m in methods.items() if name in names}

    def routes_for(host, entry_point):
        routes = dict(full_routes(host, entry_point))

        def pty(avatar, query, conn):
            return RPCServerProtocol(classic(gateway.pty_methods(avatar, entry_point == "cli"), CLASSIC_PTY))

        routes[requestline.PTY] = pty
        routes.pop(requestline.SFTP, None)  # the reference serves files on no entry point
        if entry_point == "cli":
            def whitelist(avatar, query, conn):
                methods = classic(gateway.whitelist_methods(host), CLASSIC_WHITELIST)
                methods["whitelist.WhitelistAdd"] = refusing_known_keys(host, methods["whitelist.WhitelistAdd"])
                return RPCServerProtocol(methods)

            def proxy(avatar, query, conn):
                pk_hex, port, _uri = requestline.parse_proxy_query(query)
                from skypty.keys import PublicKey

                from skypty.host.proxy import RemotePty

                d = RemotePty.dial(host, PublicKey.from_hex(pk_hex), port)
                return d.addCallback(lambda remote: RPCServerProtocol(forwarding_methods(remote),
                                                                      on_close=remote.logout))

            routes[requestline.WHITELIST] = whitelist
            routes[requestline.PROXY] = proxy
        return routes

    gateway.routes_for = routes_for


def refusing_known_keys(host, add):
    """The reference's WhitelistAdd fails the whole call when one key is
    already there (its whitelist's "skipping append" error)."""
    from skypty.host.avatar import RPCFault
    from skypty.wire.rpc import Method

    def handler(keys):
        known = set(host.whitelist.keys())
        for pk in keys:
            if pk in known:
                raise RPCFault(f"skipping append for {pk.hex()}. Already exists")
        return add.handler(keys)

    return Method(add.arg_type, add.reply_type, handler)


def forwarding_methods(remote):
    """The reference proxy: each classic call, forwarded as it is."""
    from skypty.wire import types as T
    from skypty.wire.rpc import Method

    def forward(name, arg_type, reply_type):
        return Method(arg_type, reply_type, lambda arg: remote.rpc.call(name, arg, arg_type, reply_type))

    return {
        "pty.Start": forward("pty.Start", T.CommandReq, T.EMPTY),
        "pty.Read": forward("pty.Read", T.INT, T.BYTES),
        "pty.Write": forward("pty.Write", T.BYTES, T.INT),
        "pty.SetPtySize": forward("pty.SetPtySize", T.WinSize, T.EMPTY),
        "pty.Stop": forward("pty.Stop", T.EMPTY, T.EMPTY),
    }


class ClassicHost(Host):
    def _start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             "import tests.classic_host as c; c.install(); from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logfile", self.log_path, "skypty", "--config", self.config_path],
            cwd=self.dir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        from tests.hosts import wait_for

        wait_for(self._ready, what=f"{self.cli} to accept connections")
        return self
