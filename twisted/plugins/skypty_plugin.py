"""twistd plugins: ``twistd skypty`` (the pty host) and ``twistd skypty-dmsg``
(a standalone dmsg discovery + server)."""

from twisted.application.service import ServiceMaker

skypty = ServiceMaker(
    "skypty",
    "skypty.tap",
    "Skywire-compatible remote shell host (dmsg, control socket, Noise TCP, web terminal)",
    "skypty",
)

skypty_dmsg = ServiceMaker(
    "skypty-dmsg",
    "skypty.dmsg.tap",
    "A self-hosted dmsg network: discovery service and dmsg server (key in skypty-dmsg-key.json)",
    "skypty-dmsg",
)
