"""Fault injection for the platform's own crash tests: ``HODEI_FAULT=<point>`` makes the
server kill itself (SIGKILL, like ``kill -9``) when it reaches that point, so a test can
crash it exactly between two steps that no outside timing could separate.

Points: ``register-committed`` (a worker's registration is committed, the reply not sent),
``submit-committed`` (a submitted job is committed, QueueJob's answer not sent).
Unset in production: ``point`` then does nothing.
"""

from __future__ import annotations

import os
import signal


class Faults:
    def __init__(self, armed: str) -> None:
        self.armed = armed

    def point(self, name: str) -> None:
        if self.armed == name:
            os.kill(os.getpid(), signal.SIGKILL)
