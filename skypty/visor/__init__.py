"""Talking to a Skywire visor's app server: the visor launches skypty, lends
it its identity, its dmsg client and its router (skynet) through the app
server.  These are transports the host stands on; the program the visor
starts sits above the host, in skypty/visorapp.py.

    procconfig.py  PROC_CONFIG (the launch contract) and the hello (pure)
    types.py       the app server's gob types
    appclient.py   hello + the app server's net/rpc methods, on Twisted
    appnet.py      listen/accept/dial through the app server as Twisted endpoints
    dialer.py      MultiDialer: skynet first, then dmsg, each bounded
"""
