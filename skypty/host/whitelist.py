"""The live whitelist: who may use this host.

Effective whitelist = own PK + every ``hypervisors`` PK + ``pty.whitelist``
+ runtime additions (``whitelist-add``), minus runtime removals.  Runtime
changes are written back to the config file's pty section so they survive a
restart; keys that come from the config's fixed parts (own PK, hypervisors)
cannot be removed at runtime.
"""

from twisted.logger import Logger

from skypty.config import save_whitelist


class WhitelistError(Exception):
    pass


class Whitelist:
    log = Logger()

    def __init__(self, own_pk, hypervisors=(), extra=(), config_path=None, pty_key="pty"):
        self.own_pk = own_pk
        self._fixed = dict.fromkeys([own_pk, *hypervisors])
        self._extra = dict.fromkeys(k for k in extra if k not in self._fixed)
        self._config_path = config_path
        self._pty_key = pty_key
        self._observers = []

    @classmethod
    def from_config(cls, config):
        return cls(config.pk, config.hypervisors, config.pty.whitelist, config.path, config.pty_key)

    def __contains__(self, pk):
        return pk in self._fixed or pk in self._extra

    def keys(self):
        return list(self._fixed) + list(self._extra)

    def add(self, keys):
        new = [k for k in keys if k not in self]
        for k in new:
            self._extra[k] = None
        if new:
            self._changed("added", new)
        return new

    def remove(self, keys):
        fixed = [k for k in keys if k in self._fixed]
        if fixed:
            raise WhitelistError(
                "cannot remove {} at runtime: it is the host's own key or a hypervisor".format(
                    ", ".join(k.hex() for k in fixed)))
        gone = [k for k in keys if k in self._extra]
        for k in gone:
            del self._extra[k]
        if gone:
            self._changed("removed", gone)
        return gone

    def observe(self, callback):
        """callback(whitelist) after every change (e.g. to drop removed peers)."""
        self._observers.append(callback)

    def _changed(self, verb, keys):
        self.log.info("whitelist {verb} {keys}", verb=verb, keys=[k.hex() for k in keys])
        if self._config_path:
            try:
                save_whitelist(self._config_path, self._pty_key, list(self._extra))
            except (OSError, ValueError) as e:
                # The change still holds in memory; say loudly that it won't survive a restart.
                self.log.error("could not persist the whitelist to {path}: {err}",
                               path=self._config_path, err=e)
        for callback in list(self._observers):
            callback(self)
