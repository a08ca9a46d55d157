"""The app server's Go types, declared once for the gob codec.

Names, field order and field types follow ``pkg/app/appnet`` and
``pkg/app/appserver`` of the 2024 reference: they decide the bytes on the
wire.  ``appnet.Type`` and ``routing.Port`` are a string and a uint16 to
gob (named basic types travel as their underlying type).
"""

from skypty.wire.gob import BOOL, BYTES, EMPTY, INT, STRING, UINT16, Struct
from skypty.wire.types import PubKey

NET_SKYNET = "skynet"
NET_DMSG = "dmsg"

# appnet.Addr
Addr = Struct("Addr", [("Net", STRING), ("PubKey", PubKey), ("Port", UINT16)])
# appserver.RPCIOErr: a network error taken apart (net.Error is an interface)
RPCIOErr = Struct("RPCIOErr", [("Text", STRING), ("IsNetErr", BOOL), ("IsTimeoutErr", BOOL),
                               ("IsTemporaryErr", BOOL)])
DialResp = Struct("DialResp", [("ConnID", UINT16), ("LocalPort", UINT16)])
AcceptResp = Struct("AcceptResp", [("Remote", Addr), ("ConnID", UINT16)])
WriteReq = Struct("WriteReq", [("ConnID", UINT16), ("B", BYTES)])
WriteResp = Struct("WriteResp", [("N", INT), ("Err", RPCIOErr, "err", True)])  # Err is *RPCIOErr
ReadReq = Struct("ReadReq", [("ConnID", UINT16), ("BufLen", INT)])
ReadResp = Struct("ReadResp", [("B", BYTES), ("N", INT), ("Err", RPCIOErr, "err", True)])

# Method name -> (argument type, reply type); the RPC service name is the proc key.
# SetDeadline/SetReadDeadline/SetWriteDeadline (DeadlineReq with a time.Time)
# exist too; skypty does not call them: a blocked Read ends with CloseConn.
METHODS = {
    "Dial": (Addr, DialResp),
    "Listen": (Addr, UINT16),
    "Accept": (UINT16, AcceptResp),
    "Write": (WriteReq, WriteResp),
    "Read": (ReadReq, ReadResp),
    "CloseConn": (UINT16, EMPTY),
    "CloseListener": (UINT16, EMPTY),
    "SetDetailedStatus": (STRING, EMPTY),
    "SetError": (STRING, EMPTY),
    "SetAppPort": (UINT16, EMPTY),
    "SetConnectionDuration": (INT, EMPTY),
}

# The visor lists an app as running once it reports this (appserver.AppDetailedStatusRunning).
STATUS_RUNNING = "Running"
