"""The CLI's streams (``--wait``, ``--follow``, ``job logs --follow``) reconnect while the
server is away; how long they keep trying is counted from the server's last word."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from hodei.cli.jobs import reconnecting


class _Unavailable(grpc.RpcError):
    """What a stream raises when its server goes away."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def test_a_stream_cut_after_running_longer_than_the_patience_is_opened_again() -> None:
    opened = []

    def stream() -> Iterator[int]:
        opened.append(time.monotonic())
        if len(opened) == 1:
            for item in (1, 2, 3):
                time.sleep(0.3)  # the stream runs past the patience before it is cut
                yield item
            raise _Unavailable
        yield from (4, 5)

    assert list(reconnecting(stream, patience=0.5)) == [1, 2, 3, 4, 5]
    assert len(opened) == 2


def test_a_server_silent_for_the_patience_is_given_up_on() -> None:
    opened = []

    def stream() -> Iterator[int]:
        opened.append(time.monotonic())
        raise _Unavailable
        yield 0  # a generator, as a stream is

    started = time.monotonic()
    with pytest.raises(_Unavailable):
        list(reconnecting(stream, patience=0.5))
    assert len(opened) >= 2  # it tried again
    assert time.monotonic() - started >= 0.5  # and gave up only once the patience was spent


def test_a_refusal_is_not_retried() -> None:
    class NotFound(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.NOT_FOUND

    opened = []

    def stream() -> Iterator[int]:
        opened.append(1)
        raise NotFound
        yield 0

    with pytest.raises(NotFound):
        list(reconnecting(stream, patience=5))
    assert opened == [1]
