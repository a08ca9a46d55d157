"""SFTP failures -> errno.

SFTP v3 has only a handful of status codes; everything else is
FX_FAILURE.  skypty's host puts strerror() in the message, so the errno can
be recovered from it; OpenSSH's sftp-server just says "Failure", and the
operation decides (see ``RemoteFS``).
"""

import errno
import os

from twisted.conch.ssh import filetransfer as fx
from twisted.internet import error as neterror

# Codes from later drafts that some v3 servers send anyway.
FX_WRITE_PROTECT = 12
FX_NO_SPACE_ON_FILESYSTEM = 14
FX_DIR_NOT_EMPTY = 18

_BY_STRERROR = {os.strerror(n): n for n in sorted(errno.errorcode, reverse=True)}

_BY_CODE = {
    fx.FX_NO_SUCH_FILE: errno.ENOENT,
    fx.FX_PERMISSION_DENIED: errno.EACCES,
    fx.FX_BAD_MESSAGE: errno.EINVAL,
    fx.FX_NO_CONNECTION: errno.EIO,
    fx.FX_CONNECTION_LOST: errno.EIO,
    fx.FX_OP_UNSUPPORTED: errno.ENOTSUP,
    fx.FX_FILE_ALREADY_EXISTS: errno.EEXIST,
    fx.FX_NOT_A_DIRECTORY: errno.ENOTDIR,
    fx.FX_FILE_IS_A_DIRECTORY: errno.EISDIR,
    FX_NO_SPACE_ON_FILESYSTEM: errno.ENOSPC,
    FX_DIR_NOT_EMPTY: errno.ENOTEMPTY,
    FX_WRITE_PROTECT: errno.EROFS,
}


class LinkDown(ConnectionError):
    """The host cannot be reached right now (the mount answers EIO)."""


class HostRefused(LinkDown):
    """The host (or the local host on its behalf) answered and said no: the
    message is the whole reason, not a failure to reach it."""


def is_generic_failure(exc):
    """FX_FAILURE whose message names no errno (OpenSSH's plain "Failure")."""
    return (isinstance(exc, fx.SFTPError) and exc.code == fx.FX_FAILURE
            and str(exc.message) not in _BY_STRERROR)


def errno_for(exc, default=errno.EIO):
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, fx.SFTPError):
        if exc.code == fx.FX_FAILURE:
            return _BY_STRERROR.get(str(exc.message), default)
        return _BY_CODE.get(exc.code, default)
    if isinstance(exc, NotImplementedError):
        return errno.ENOTSUP
    if isinstance(exc, (LinkDown, neterror.ConnectionLost, neterror.ConnectionDone, TimeoutError,
                        neterror.TimeoutError)):
        return errno.EIO
    return default
