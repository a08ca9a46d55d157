"""skypty as a Skywire visor app: the visor launches it, lends it its
identity, its dmsg client and its router (skynet) through the app server.

    procconfig.py  PROC_CONFIG (the launch contract) and the hello (pure)
    types.py       the app server's gob types
    appclient.py   hello + the app server's net/rpc methods, on Twisted
    appnet.py      listen/accept/dial through the app server as Twisted endpoints
    dialer.py      MultiDialer: skynet first, then dmsg, each bounded
    app.py         the ``skypty-visor-app`` console script
"""
