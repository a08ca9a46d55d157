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
    credentialInterfaces = (IProvenPublicKey,)

    def __init__(self, whitelist):
        self.whitelist = whitelist

    def requestAvatarId(self, credentials):
        pk = credentials.public_key
        if pk in self.whitelist:
            return defer.succeed(pk)
        return defer.fail(NotWhitelisted(pk))


@implementer(IRealm)
class PtyRealm:
    """Builds a PtyAvatar for a whitelisted key; *avatar_factory(pk)* does the work."""

    def __init__(self, avatar_factory):
        self.avatar_factory = avatar_factory

    def requestAvatar(self, avatarId, mind, *interfaces):
        if IPtyAvatar not in interfaces:
            raise NotImplementedError("skypty only offers IPtyAvatar")
        avatar = self.avatar_factory(avatarId, mind)
        return IPtyAvatar, avatar, avatar.logout


def make_portal(whitelist, avatar_factory):
    return Portal(PtyRealm(avatar_factory), [WhitelistChecker(whitelist)])
