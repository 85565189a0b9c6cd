"""The selector kafka-python's clients get: the stdlib's default, its failed lookups cheap."""

from __future__ import annotations

import selectors
import socket

import pytest

from engage import kafka_clients
from engage.quiet_selector import QuietSelector
from engage.settings import Settings


def test_it_answers_lookups_as_the_default_selector_does() -> None:
    a, b = socket.socketpair()
    with a, b:
        quiet, default = QuietSelector(), selectors.DefaultSelector()
        for selector in (quiet, default):
            with pytest.raises(KeyError):
                selector.get_key(a)
            selector.register(a, selectors.EVENT_READ, "reader")
            assert selector.get_key(a).data == "reader"
            assert selector.get_key(a.fileno()).fileobj is a  # by descriptor too
            with pytest.raises(KeyError):
                selector.get_key(b)
            selector.unregister(a)
            with pytest.raises(KeyError):
                selector.get_key(a)
            selector.close()
            with pytest.raises(RuntimeError, match="closed"):
                selector.get_key(a)
        assert isinstance(quiet, type(default))  # epoll on Linux, as kafka-python would pick


def test_a_failed_lookup_does_not_format_the_socket() -> None:
    """The point of it: the stdlib's message holds the socket's repr (two system calls)."""
    a, b = socket.socketpair()
    with a, b, QuietSelector() as selector:
        with pytest.raises(KeyError) as caught:
            selector.get_key(a)
        assert "socket" not in str(caught.value) and str(a.fileno()) not in str(caught.value)


def test_kafka_python_clients_are_given_it() -> None:
    settings = Settings(_env_file=None, kafka_bootstrap_servers="127.0.0.1:1")
    options: dict = {}

    class Capture:
        def __init__(self, *topics: str, **kwargs) -> None:
            options.update(kwargs)

    for name, build in (("KafkaProducer", kafka_clients.producer),
                        ("KafkaConsumer", kafka_clients.consumer)):  # fmt: skip
        options.clear()
        saved = getattr(kafka_clients, name)
        setattr(kafka_clients, name, Capture)
        try:
            build(settings)
        finally:
            setattr(kafka_clients, name, saved)
        assert options["selector"] is QuietSelector, name
