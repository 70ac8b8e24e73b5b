"""The local stack: the services, Jaeger and real MTAs as processes on this machine (the
embedded default), and the commands that use it (`up`, `demo`, `check`)."""
