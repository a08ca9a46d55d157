"""``skypty-client config gen`` and ``config pk``: a host's config without
hand-edited JSON.

The options cover what people change first: where the host listens, who
may come in, and which dmsg network it joins: its own (``--embedded``, the
default), another host's (``--discovery URL``), or a public Skywire
deployment (``--network prod|test``).
"""

import os
import sys

from skypty.client.identity import config_path, read_config_json


def fail(message):
    sys.stderr.write(f"skypty-client: {message}\n")
    return 1


def check_options(args):
    """-> None, or the one-line complaint about the first bad option."""
    from skypty.config import ConfigError, NETWORKS, parse_listen
    from skypty.keys import InvalidKey, PublicKey

    listens = [("--ssh-listen", args.ssh_listen), ("--web-listen", args.web_listen),
               ("--embedded-discovery", args.embedded_discovery), ("--embedded-server", args.embedded_server),
               ("--server-address", args.server_address)]
    for option, value in listens:
        if value:
            try:
                parse_listen(value, option)
            except ConfigError as e:
                return f"{e} (\"\" turns a listener off)" if option in ("--ssh-listen", "--web-listen") else str(e)
    manhole = getattr(args, "manhole", "")
    if manhole and not (manhole.startswith("unix:/") or manhole.startswith("/")):
        return (f"--manhole: expected a unix socket such as unix:/run/skypty-manhole.sock, got {manhole!r} "
                "(the manhole is a Python prompt inside the host: keep it on a 0600 unix socket)")
    if not 0 < args.dmsg_port < 65536:
        return f"--dmsg-port: must be between 1 and 65535, got {args.dmsg_port}"
    for pk in args.whitelist:
        try:
            PublicKey.from_hex(pk)
        except InvalidKey as e:
            return f"--whitelist {pk!r}: {e}"
    if args.discovery and not args.discovery.startswith(("http://", "https://")):
        return f"--discovery: expected an http(s) URL such as http://203.0.113.7:9090, got {args.discovery!r}"
    joining = args.discovery or args.network
    if joining and (args.embedded_discovery or args.embedded_server or args.server_address):
        return "--embedded-discovery/--embedded-server/--server-address set up an embedded network; " \
               "drop them when joining another one"
    if args.network and args.network not in NETWORKS:
        return f"--network: expected one of {', '.join(NETWORKS)}, got {args.network!r}"
    return None


def _manhole_endpoint(value):
    """'/run/x.sock' -> 'unix:/run/x.sock' (a Twisted endpoint, as pty.manhole wants)."""
    return "unix:" + value if value.startswith("/") else value


def cmd_gen(args):
    from skypty.config import NETWORKS, generate_config_file

    problem = check_options(args)
    if problem:
        return fail(problem)
    if os.path.exists(args.output) and not args.force:
        return fail(f"{args.output} exists; use --force to overwrite it")
    directory = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(directory):
        return fail(f"-o {args.output}: directory {directory} does not exist")
    discovery = args.discovery or (NETWORKS[args.network] if args.network else None)
    try:
        config = generate_config_file(
            args.output, cli_address=args.cli_address, ssh_listen=args.ssh_listen,
            web_listen=args.web_listen, discovery=discovery,
            embedded_discovery=args.embedded_discovery, embedded_server=args.embedded_server,
            server_address=args.server_address or "", dmsg_port=args.dmsg_port,
            whitelist=tuple(dict.fromkeys(pk.lower() for pk in args.whitelist)),
            persistent_sessions=args.persistent_sessions, manhole=_manhole_endpoint(args.manhole))
    except OSError as e:
        return fail(f"cannot write {args.output}: {e.strerror}")
    pty, dmsg = config.pty, config.dmsg
    network = (f"its own (discovery {dmsg.embedded.discovery_listen}, server {dmsg.embedded.server_listen})"
               if dmsg.embedded else dmsg.discovery)
    sys.stderr.write(
        f"wrote {args.output} (pk {config.pk.hex()}): control socket {pty.cli_address}, "
        f"noise tcp {pty.ssh_listen or 'off'}, web {pty.web_listen or 'off'}, "
        f"dmsg port {pty.dmsg_port} on {network}"
        + (f", manhole {pty.manhole}" if pty.manhole else "") + "\n")
    return 0


def cmd_pk(args):
    """Print the public key of a config (for another host's --whitelist)."""
    from skypty.keys import InvalidKey, SecretKey
    from skypty.client.identity import IdentityError

    path = config_path(args)
    try:
        data = read_config_json(path, hint="use -i CONFIG")
    except IdentityError as e:
        return fail(str(e))
    try:
        sk = SecretKey.from_hex(data.get("sk", "") if isinstance(data, dict) else "")
    except InvalidKey as e:
        return fail(f"{path}: sk: {e}")
    print(sk.public_key.hex())
    return 0


def cmd_config(args, parser):
    if args.config_verb == "gen":
        return cmd_gen(args)
    if args.config_verb == "pk":
        return cmd_pk(args)
    parser.parse_args(["config", "--help"])
    return 1
