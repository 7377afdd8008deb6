"""The Hodei worker agent: runs one job for the server that started it, then exits.

It depends only on grpcio, protobuf and the generated modules in ``hodei._proto``,
so the worker image stays small (``template``, the local provider's fork server, also
uses setproctitle).
"""

__version__ = "0.1.0"
