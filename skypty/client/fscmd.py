"""`skypty-client fs mount|umount`: not built yet (the SFTP service and the
FUSE client are tracked as their own piece of work)."""

import sys


def cmd_fs(args, parser):
    sys.stderr.write("skypty-client: fs mount/umount is not available in this version yet "
                     "(the host's dmsgpty/sftp service is still being built)\n")
    return 1
