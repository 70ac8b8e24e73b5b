"""tlsstorm: a testbed that measures what STARTTLS spam costs a mail server."""

__version__ = "0.1.0"
