"""The meter: runs beside any mail server and reads its processes' CPU and memory from the
kernel, so that server can be the measured target of waves, sweeps and plans."""
