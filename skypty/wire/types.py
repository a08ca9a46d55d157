"""The Go types skypty exchanges, declared once for the gob codec.

Names, field order and types follow the reference (dmsgpty, dmsg, net/rpc)
exactly: they decide the bytes on the wire.
"""

from skypty.keys import PublicKey
from skypty.wire.gob import (
    BOOL, BYTES, EMPTY, INT, STRING, UINT, UINT8, UINT16, Array, BinaryMarshaler, Slice, Struct,
)

# net/rpc
Request = Struct("Request", [("ServiceMethod", STRING), ("Seq", UINT)])
Response = Struct("Response", [("ServiceMethod", STRING), ("Seq", UINT), ("Error", STRING)])

# skywire cipher.PubKey: MarshalBinary gives the 33 compressed bytes.
PubKey = BinaryMarshaler("PubKey", lambda pk: pk.raw, lambda raw: PublicKey(raw), gostring="cipher.PubKey")
PubKeys = Slice(PubKey, gostring="[]cipher.PubKey")
StringSlice = Slice(STRING, gostring="[]string")

# dmsgpty
WinSize = Struct("WinSize", [("X", UINT16), ("Y", UINT16), ("Rows", UINT16), ("Cols", UINT16)])
CommandReq = Struct("CommandReq", [("Name", STRING), ("Arg", StringSlice),
                                   ("Size", WinSize, "size", True), ("Env", StringSlice)])
# The 2023 reference's CommandReq had no Env.  gob matches fields by name and
# ignores unknown ones, so either shape reaches either host; this one
# reproduces that reference's bytes.
CommandReqV1 = Struct("CommandReq", CommandReq.fields[:3], cls=CommandReq.cls)
CommandExecReq = Struct("CommandExecReq", [
    ("Name", STRING), ("Arg", StringSlice), ("Env", StringSlice), ("Stdin", BYTES),
    ("TimeoutMS", INT, "timeout_ms")])
CommandExecResult = Struct("CommandExecResult", [
    ("Stdout", BYTES), ("Stderr", BYTES), ("StdoutTruncated", BOOL), ("StderrTruncated", BOOL),
    ("ExitCode", INT), ("TimedOut", BOOL), ("DurationMS", INT, "duration_ms")])
# skypty's offset-aware reattach (a reference host answers "can't find method").
AttachReq = Struct("AttachReq", [("ID", STRING, "id"), ("Offset", INT)])
# End: where the session's output stands now (End - Offset = bytes the client
# is about to be replayed); hosts before it leave it 0.
AttachResult = Struct("AttachResult", [("Offset", INT), ("Lost", INT), ("End", INT)])
SessionInfo = Struct("SessionInfo", [("ID", STRING, "id"), ("Owner", STRING), ("Command", STRING),
                                     ("Attached", INT), ("IdleSeconds", INT)])
SessionList = Slice(SessionInfo, gostring="[]SessionInfo")
# skypty's labelled whitelist (whitelist.Sources): Source is "own",
# "hypervisor", "config" or "runtime" (added since the host started).
WhitelistEntry = Struct("WhitelistEntry", [("PK", PubKey, "pk"), ("Source", STRING)])
WhitelistEntries = Slice(WhitelistEntry, gostring="[]WhitelistEntry")

# dmsg
Addr = Struct("Addr", [("PK", PubKey, "pk"), ("Port", UINT16)])
StreamRequest = Struct("StreamRequest", [("Timestamp", INT), ("SrcAddr", Addr), ("DstAddr", Addr),
                                         ("NoiseMsg", BYTES)])
SHA256 = Array(UINT8, 32, name="SHA256")  # a plain [32]byte: 32 gob uints
StreamResponse = Struct("StreamResponse", [("ReqHash", SHA256), ("Accepted", BOOL),
                                           ("ErrCode", UINT16), ("NoiseMsg", BYTES)])

# Re-exported so callers need only this module.
__all__ = ["BOOL", "BYTES", "EMPTY", "INT", "STRING", "UINT"] + [n for n in dir() if n[:1].isupper()]


# What a pty.Read answers, as its error, instead of bytes a follower of a
# persistent session will never get: lost (the ring overwrote them) or
# skipped (an interrupt flushed them); the byte count follows.
LOST_PREFIX = "dmsgpty: output lost: "
SKIP_PREFIX = "dmsgpty: output skipped: "  # skypty only
