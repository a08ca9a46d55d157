"""cred for skypty, in the manner of twisted.conch.

The credential is a public key that the transport has already *proven*: the
Noise remote static key (direct TCP), the signed source PK of a dmsg stream,
or the host's own key for the local control socket (guarded by file mode).
The checker is the live whitelist; the realm hands out a PtyAvatar, which is
everything one connection may do on this host.
"""

import attr
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer


class IProvenPublicKey(ICredentials):
    """A peer's public key, proven by the transport it came over."""

    public_key = Attribute("skypty.keys.PublicKey")
    entry_point = Attribute("'cli', 'tcp', 'dmsg' or 'web'")


@implementer(IProvenPublicKey)
@attr.s(frozen=True)
class ProvenPublicKey:
    public_key = attr.ib()
    entry_point = attr.ib(default="tcp")


class IPtyAvatar(Interface):
    """What a logged-in peer may do (see skypty.host.gateway.PtyAvatar)."""


class NotWhitelisted(cred_error.UnauthorizedLogin):
    def __init__(self, pk):
        super().__init__(f"not authorized: {pk.hex()} is not whitelisted on this host")
        self.public_key = pk


@implementer(ICredentialsChecker)
class WhitelistChecker:
    log = Logger()
    credentialInterfaces = (IProvenPublicKey,)

    def __init__(self, whitelist):
        self.whitelist = whitelist

    def requestAvatarId(self, credentials):
        pk = credentials.public_key
        if pk in self.whitelist:
            return defer.succeed(pk)
        return defer.fail(NotWhitelisted(pk))


# What a revoked key's pending calls (a pty.Read, a pty.Exec) are answered
# with, verbatim, before its connection closes: any client can print it.
# skypty.client.errors.REVOKED is the same text (the client imports no host code).
REVOKED = "the host revoked this key's access (whitelist-remove)"


@attr.s
class Mind:
    """What the realm is told about a login: where it came from, and how to
    end it from our side (abort its connection) when the key is revoked."""

    entry_point = attr.ib()
    disconnect = attr.ib(default=None)


def entry_point_of(mind):
    return getattr(mind, "entry_point", mind)


class LiveLogins:
    """Who is logged in right now, by key, so that taking a key off the
    whitelist ends its live connections on every entry point at once."""

    def __init__(self):
        self._by_key = {}  # pk -> {login token: (avatar, mind)}

    def add(self, pk, avatar, mind):
        """-> a callable that forgets this login (call it on logout)."""
        token = object()
        self._by_key.setdefault(pk, {})[token] = (avatar, mind)

        def forget():
            logins = self._by_key.get(pk)
            if logins is not None:
                logins.pop(token, None)
                if not logins:
                    del self._by_key[pk]

        return forget

    def keys(self):
        return list(self._by_key)

    def count(self, pk):
        return len(self._by_key.get(pk, ()))

    def revoke(self, pk):
        """End every live login of *pk*: its processes are killed (a persistent
        shell too: nothing is left to reattach to) and its pending calls
        answered with REVOKED, then its connection is closed (after those
        answers).  -> the entry points of the logins that were ended."""
        ended = []
        for avatar, mind in list(self._by_key.pop(pk, {}).values()):
            ended.append(entry_point_of(mind))
            revoke = getattr(avatar, "revoke", None)
            if revoke is not None:
                revoke()
            disconnect = getattr(mind, "disconnect", None)
            if disconnect is not None:
                disconnect()
        return ended


@implementer(IRealm)
class PtyRealm:
    """Builds a PtyAvatar for a whitelisted key; *avatar_factory(pk, entry_point)*
    does the work.  Every login is kept in *live* until it logs out."""

    def __init__(self, avatar_factory, live=None):
        self.avatar_factory = avatar_factory
        self.live = live if live is not None else LiveLogins()

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IPtyAvatar not in interfaces:
            raise NotImplementedError("skypty only offers IPtyAvatar")
        avatar = self.avatar_factory(avatarId, entry_point_of(mind))
        forget = self.live.add(avatarId, avatar, mind)

        def logout():
            forget()
            avatar.logout()

        return IPtyAvatar, avatar, logout


def make_portal(whitelist, avatar_factory, live=None):
    """The one portal every entry point logs in through.  A key taken off
    *whitelist* loses its live logins at once (see LiveLogins.revoke)."""
    realm = PtyRealm(avatar_factory, live)

    def drop_removed(whitelist):
        for pk in realm.live.keys():
            if pk not in whitelist:
                ended = realm.live.revoke(pk)
                WhitelistChecker.log.info("revoked {pk}: ended {n} live connection(s) ({entries})", pk=pk.hex(),
                                          n=len(ended), entries=",".join(sorted(set(ended))))

    whitelist.observe(drop_removed)
    portal = Portal(realm, [WhitelistChecker(whitelist)])
    portal.live = realm.live
    return portal
