"""What went wrong, in words a user can act on (pure, but for fail(), which
prints the one line).

Hosts answer in the protocol's own terms: a reject byte, a closed stream,
``rpc: can't find method pty.Sessions``.  This module turns each of those
into one line that says what happened and what to do about it; the verbs
print it.  docs/guide.md has the same table for people.
"""

import re
import sys

from skypty.errors import SkyptyError

PK_PATTERN = r"\b[0-9a-fA-F]{66}\b"  # compiled where used (re caches it), not at every start
EXIT_USAGE = 2


class ClientError(SkyptyError):
    """One line for the user; *code* is the exit code."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def fail(message, code=1):
    from skypty.client.textsafe import safe  # a host's words are in many messages

    sys.stderr.write(f"skypty-client: {safe(message)}\n")
    return code


def usage_error(message):
    return ClientError(message, EXIT_USAGE)


def not_whitelisted(host_pk, own_pk):
    return (f"not authorized: host {host_pk} does not whitelist your key {own_pk} "
            f"(on that host: skypty-client whitelist-add {own_pk})")


def wrong_host_key(address, pk):
    return f"the host at {address} is not {pk} (wrong public key?)"


# -- the local host's reasons (reject byte + "reason-word: text", docs/protocol.md;
#    read by skypty.wire.requestline.parse_rejection) ----------------------------------------

def proxy_refusal(reason, text, target_pk, port, local="the local host", closed=False):
    """Why the local host could not give us *target_pk*'s pty service.
    *closed*: it hung up without even the reject byte."""
    if reason == "not-whitelisted":
        keys = re.findall(PK_PATTERN, text)
        own = keys[-1] if len(keys) >= 2 else "of the local host"
        return not_whitelisted(target_pk, own)
    if reason == "not-in-discovery":
        return (f"host {target_pk} is not in dmsg discovery: it is offline or has never "
                "run (check the key)")
    if reason == "discovery-unavailable":
        return f"{local} cannot reach dmsg discovery, so it cannot look up {target_pk} ({text})"
    if reason == "no-shared-server":
        return (f"host {target_pk} shares no dmsg server with {local} "
                "(are both on the same dmsg network?)")
    if reason == "no-answer":
        return f"host {target_pk} did not answer over dmsg (it stopped, or lost its dmsg session)"
    if reason == "refused":
        return f"host {target_pk} refused the stream: nothing listens on its dmsg port {port} (check --port)"
    if reason == "no-sftp":
        return (f"host {target_pk} serves no files: it has no SFTP service (a Skywire reference "
                "host, or pty.sftp is off there); exec and start work")
    if reason == "peer-error":  # refused, for another reason than the port (the reference's code in words)
        why = text.rsplit(": ", 1)[-1] if " refused the stream" in text else text
        return f"host {target_pk} refused the stream on dmsg port {port}: {why}"
    if reason == "no-overlay":
        return f"{local} has no dmsg overlay running, so it cannot reach {target_pk}"
    if reason == "unreachable":  # every transport failed (under a visor: skynet, then dmsg)
        return f"host {target_pk} is unreachable from {local}: {text}"
    if reason == "timeout":
        return f"host {target_pk} did not answer in time ({text})"
    if reason in ("scheme-unavailable", "bad-scheme"):
        return f"--scheme: {text}"
    if reason == "failed":  # a skypty host's own failure: not the peer's doing
        return f"{local} failed while reaching {target_pk}: {text} (its log has the details)"
    if reason:
        return f"{local} could not reach {target_pk}: {text or reason}"
    if closed:
        # A skypty host always says why (above); a reference host hangs up on any
        # failure; either may also have crashed or been stopped mid-request.
        return (f"{local} hung up without a reason while reaching {target_pk}: a reference host "
                "does that when the peer is offline, unreachable, or does not whitelist its key; "
                "a skypty host only when it failed or stopped (look at its log)")
    return (f"{local} refused to reach {target_pk} without saying why (a reference or an older "
            "host): it is offline, unreachable, or does not whitelist the local host's key")


# -- RPC errors ---------------------------------------------------------------------------------

# A host answers a revoked key's pending calls with this text (skypty.host.auth.REVOKED).
REVOKED = "the host revoked this key's access (whitelist-remove)"


def raise_if_revoked(error):
    """A pending read that ended with the host's revocation is no EOF: the
    session did not end on its own, so say why and exit 1."""
    if str(error) == REVOKED:
        raise ClientError(REVOKED)


def explain_rpc(message, session_id=None):
    """A raw RPC error string -> what it means for the user (or None: say it as it is)."""
    sid = session_id or "?"
    m = re.fullmatch(r"rpc: can't find (?:method|service) (\S+)", message)
    if m:
        method = m.group(1)
        # A reference host (or a skypty host from before ERR_SESSIONS_OFF): no
        # such feature at all, so no setting to blame.
        if method == "pty.Sessions":
            return ("this host does not offer persistent sessions (a reference host, or an "
                    "older skypty), so there are none to list")
        if method in ("pty.Attach", "pty.AttachAt"):
            return (f"cannot reattach {sid}: this host does not offer persistent sessions "
                    "(a reference host, or an older skypty); start a new shell without --attach")
        if method == "host.Peers":
            return ("the local host does not offer `list` (host.Peers): it is an older or a "
                    "reference host; `list` needs a skypty host")
        if method == "host.WebURL":
            return "the local host has no web terminal to offer (an older or a reference host)"
        return f"the host does not offer {method} (an older or a reference host)"
    if message == "dmsgpty: persistent sessions are off on this host":  # host.avatar.ERR_SESSIONS_OFF
        if session_id is None:
            return ("this host keeps no persistent sessions (pty.persistent_sessions is off "
                    "in its config), so there are none to list")
        return (f"cannot reattach {sid}: this host keeps no persistent sessions "
                "(pty.persistent_sessions is off); start a new shell without --attach")
    if message == "dmsgpty: session not found":
        return (f"no session {sid} on the host: it has ended, or was reaped after its idle time "
                "(skypty-client list --sessions shows the live ones)")
    if message == "dmsgpty: session owned by a different public key":
        return f"session {sid} belongs to another key: only the key that started it may attach"
    return None
