"""``twistd skypty --config skywire-config.json``: options and service assembly."""

import os
import sys

from twisted.python import usage

from skypty.config import ConfigError, generate_config_file, load_config


class Options(usage.Options):
    synopsis = "[--config PATH] [--manhole ENDPOINT]"
    longdesc = (
        "Run a Skywire-compatible pty host. Whitelisted peers (own PK, hypervisors, "
        "pty.whitelist) can open a shell, run commands, mount the filesystem or use the "
        "web terminal. If the config file does not exist, a fresh one with new keys and "
        "an embedded local dmsg network is written there first."
    )
    optParameters = [
        ["config", "c", "skywire-config.json", "Path to the Skywire visor config (JSON)."],
        ["manhole", None, None,
         "Serve a twisted.conch manhole on this endpoint, e.g. unix:/run/skypty-manhole.sock "
         "(overrides the config's pty.manhole)."],
    ]

    def postOptions(self):
        path = self["config"]
        if not os.path.exists(path):
            try:
                config = generate_config_file(path)
            except OSError as e:
                raise usage.UsageError(f"cannot write a new config to {path}: {e.strerror}")
            sys.stderr.write(f"skypty: wrote a new config to {path} (pk {config.pk.hex()})\n")
        try:
            self.config = load_config(path)
        except ConfigError as e:
            raise usage.UsageError(str(e))


def makeService(options):
    from skypty.host.service import HostService

    return HostService(options.config, manhole=options["manhole"])
