"""The portal: whitelist checks and revocation of live logins (unit level)."""

import pytest

from skypty.host.auth import IPtyAvatar, Mind, NotWhitelisted, ProvenPublicKey, make_portal
from skypty.host.whitelist import Whitelist
from skypty.keys import generate_keypair


class FakeAvatar:
    def __init__(self, pk, entry_point):
        self.pk, self.entry_point = pk, entry_point
        self.revoked = self.logged_out = 0

    def revoke(self):
        self.revoked += 1

    def logout(self):
        self.logged_out += 1


def login(portal, pk, entry_point, disconnect=None):
    results = []
    portal.login(ProvenPublicKey(pk, entry_point), Mind(entry_point, disconnect), IPtyAvatar).addBoth(results.append)
    return results[0]


def test_removing_a_key_revokes_each_live_login_once_and_only_that_key():
    own, _ = generate_keypair()
    guest, _ = generate_keypair()
    other, _ = generate_keypair()
    whitelist = Whitelist(own, extra=[guest, other])
    portal = make_portal(whitelist, FakeAvatar)
    dropped = []
    _i, tcp, _ = login(portal, guest, "tcp", lambda: dropped.append("tcp"))
    _i, web, _ = login(portal, guest, "web", lambda: dropped.append("web"))
    _i, kept, _ = login(portal, other, "dmsg", lambda: dropped.append("other"))
    whitelist.remove([guest])
    assert (tcp.revoked, web.revoked, kept.revoked) == (1, 1, 0)
    assert sorted(dropped) == ["tcp", "web"]
    assert portal.live.count(guest) == 0 and portal.live.count(other) == 1
    assert login(portal, guest, "tcp").check(NotWhitelisted)


def test_logout_forgets_the_login():
    own, _ = generate_keypair()
    guest, _ = generate_keypair()
    whitelist = Whitelist(own, extra=[guest])
    portal = make_portal(whitelist, FakeAvatar)
    _i, avatar, logout = login(portal, guest, "tcp")
    logout()
    assert avatar.logged_out == 1 and portal.live.count(guest) == 0
    whitelist.remove([guest])
    assert avatar.revoked == 0  # a finished login is not touched again


@pytest.mark.parametrize("entry", ["cli", "tcp", "dmsg", "web"])
def test_the_realm_hands_the_entry_point_to_the_avatar(entry):
    own, _ = generate_keypair()
    portal = make_portal(Whitelist(own), FakeAvatar)
    _i, avatar, _ = login(portal, own, entry)
    assert avatar.entry_point == entry
