"""URL parsing: examples, round trips, and only ValueError for bad input."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_lavin import Parameters, parse_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("amqp://localhost", Parameters()),
        ("amqp://", Parameters()),
        ("amqps://h", Parameters(scheme="amqps", host="h", port=5671)),
        ("ws://h", Parameters(scheme="ws", host="h", port=15672)),
        ("wss://h", Parameters(scheme="wss", host="h", port=15671)),
        ("AMQP://h:1234/", Parameters(host="h", port=1234)),
        ("amqp://u%40x:p%3Aw%2F@h/", Parameters(host="h", username="u@x", password="p:w/")),
        ("amqp://h/%2f", Parameters(host="h", virtual_host="/")),
        ("amqp://h/prod", Parameters(host="h", virtual_host="prod")),
        ("amqp://h/a%2Fb", Parameters(host="h", virtual_host="a/b")),
        ("amqp://[::1]:5673/", Parameters(host="::1", port=5673)),
        ("amqp://10.1.2.3/", Parameters(host="10.1.2.3")),
        (
            "amqp://h/?heartbeat=10&frame_max=8192&channel_max=100"
            "&connection_timeout=2500&connection_name=my%20app",
            Parameters(
                host="h",
                heartbeat=10,
                frame_max=8192,
                channel_max=100,
                connection_timeout=2.5,
                connection_name="my app",
            ),
        ),
        (
            "amqps://h/?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem"
            "&verify=verify_none&server_name_indication=broker.example",
            Parameters(
                scheme="amqps",
                host="h",
                port=5671,
                cacertfile="/ca.pem",
                certfile="/c.pem",
                keyfile="/k.pem",
                verify=False,
                server_name_indication="broker.example",
            ),
        ),
        ("amqp://h/?auth_mechanism=PLAIN", Parameters(host="h")),
    ],
)
def test_url_examples_parse_to_the_expected_parameters(url: str, expected: Parameters) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h/", "URL scheme must be one of"),
        ("localhost:5672", "URL scheme must be one of"),
        ("amqp://h:0/", "port must be in 1..65535, not 0"),
        ("amqp://h:99999/", "port must be a number in 1..65535, not '99999'"),
        ("amqp://h:port/", "port must be a number in 1..65535, not 'port'"),
        ("amqp://h:/", "port is empty"),
        ("amqp://h/a/b", "vhost must be one path segment"),
        ("amqp://h/?heartbeat=soon", "heartbeat must be an integer, not 'soon'"),
        ("amqp://h/?heartbeat=70000", "heartbeat must be in 0..65535, not 70000"),
        ("amqp://h/?frame_max=-1", "frame_max must be in"),
        ("amqp://h/?colour=red", "unknown URL query parameter 'colour'"),
        ("amqp://h/?verify=maybe", "verify must be verify_peer or verify_none"),
        ("amqp://h/?auth_mechanism=EXTERNAL", "auth_mechanism must be 'PLAIN'"),
        ("amqp://h/?heartbeat", "query parameter 'heartbeat' has no value"),
        ("amqp://h/#frag", "must not have a fragment"),
        ("amqp://[::1/", "malformed URL"),
        ("amqp://h/?connection_timeout=0", "connection_timeout must be > 0"),
    ],
)
def test_bad_urls_raise_value_error_naming_the_part(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_url(url)


def test_password_never_appears_in_errors_repr_or_str() -> None:
    secret = "Zebra-42-secret"
    params = parse_url(f"amqp://user:{secret}@host/")
    assert params.password == secret
    assert secret not in repr(params)
    assert secret not in str(params)
    assert "***" in repr(params)
    for bad in (
        f"amqp://user:{secret}@host:99999/",
        f"amqp://user:{secret}@host/a/b",
        f"amqp://user:{secret}@host/?heartbeat=x",
        f"amqp://user:{secret}@[::1/",
        f"amqp://user:{secret}@host:/",
    ):
        with pytest.raises(ValueError, match=r"URL|port|vhost|heartbeat") as excinfo:
            parse_url(bad)
        assert secret not in str(excinfo.value), bad


text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=0, max_size=12)
hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,6}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)


def optional_int(low: int, high: int) -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(low, high))


def seconds(milliseconds: int) -> float:
    return milliseconds / 1000


@st.composite
def parameters(draw: st.DrawFn) -> Parameters:
    scheme = draw(st.sampled_from(["amqp", "amqps", "ws", "wss"]))
    return Parameters(
        scheme=scheme,
        host=draw(hosts),
        port=draw(st.integers(1, 65535)),
        username=draw(text),
        password=draw(text),
        virtual_host=draw(text.filter(bool)),
        heartbeat=draw(optional_int(0, 65535)),
        frame_max=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        channel_max=draw(optional_int(0, 65535)),
        connection_timeout=draw(
            st.one_of(st.none(), st.integers(1, 10**6).map(lambda ms: ms / 1000))
        ),
        connection_name=draw(st.one_of(st.none(), text)),
        cacertfile=draw(st.one_of(st.none(), text)),
        verify=draw(st.booleans()),
    )


@given(parameters())
def test_any_parameters_rendered_to_a_url_parse_back_equal(params: Parameters) -> None:
    url = params.to_url(redact=False)
    assert parse_url(url) == params
    assert parse_url(params.to_url()).password == "***"


@given(st.text(max_size=80))
def test_arbitrary_text_raises_only_value_error(url: str) -> None:
    try:
        parse_url(url)
    except ValueError:
        pass


@given(st.sampled_from(["amqp://", "amqps://", "ws://", "wss://"]), st.text(max_size=60))
def test_arbitrary_text_after_a_scheme_raises_only_value_error(scheme: str, rest: str) -> None:
    try:
        parse_url(scheme + rest)
    except ValueError:
        pass


# Found by fuzz/fuzz_url.py (its corpus keeps the inputs as crash-*).


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp:/user:Zebra-42-secret@host/", "'amqp:/'"),
        ("amqp//user:Zebra-42-secret@host/", "'amqp//'"),
        ("amqp:user:Zebra-42-secret@host/", "'amqp:'"),
    ],
)
def test_scheme_error_shows_only_the_scheme_not_the_password_after_it(
    url: str, shown: str
) -> None:
    with pytest.raises(ValueError, match="URL scheme must be one of") as excinfo:
        parse_url(url)
    assert str(excinfo.value).endswith(f"not {shown}")
    assert "ebra" not in str(excinfo.value).lower()


@pytest.mark.parametrize(
    "url",
    [
        "amqp://user:Zebra/42@host/",  # '/' ends the host part: "Zebra" looks like the port
        "amqp://user:Zebra?42@host/",  # '?' starts a query: "42@host/" looks like a parameter
        "amqp://user:Zebra#42@host/",  # '#' starts a fragment
        "amqp://user:1234/Zebra/x@host/",  # port 1234, then a vhost with a '/'
        "amqp://user:5672/Zebra@host",  # parses (host "user", vhost "Zebra@host"): refused
        "amqp://user:1/Zebra@host/vhost",
    ],
)
def test_unencoded_slash_question_mark_or_hash_in_the_password_is_not_shown(url: str) -> None:
    with pytest.raises(ValueError, match=r"'@' after the host part.*percent-encode") as excinfo:
        parse_url(url)
    assert "Zebra" not in str(excinfo.value)
    assert excinfo.value.__suppress_context__


def test_an_at_sign_after_the_host_is_fine_in_a_query_value_and_encoded_in_the_vhost() -> None:
    params = parse_url("amqp://host/team%40site?connection_name=me@box")
    assert (params.host, params.virtual_host, params.connection_name) == (
        "host",
        "team@site",
        "me@box",
    )


def test_malformed_bracketed_host_error_does_not_quote_the_netloc() -> None:
    url = "amqp://sws[0u:Zebra-42-secret]:7[t/:56@"
    with pytest.raises(ValueError, match="malformed URL host: square brackets") as excinfo:
        parse_url(url)
    assert "Zebra" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # urlsplit checks only the first bracketed text, here the user name.
        ("ws://[516:7::09]:7@[;:09]/", "must be an IPv6 address, not ';:09'"),
        ("ws://[517:4::09]:7@0=]/", "unbalanced square brackets: '0=]'"),
    ],
)
def test_a_bracketed_user_name_does_not_let_a_bad_host_through(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_url(url)


def test_bracketed_ipv6_host_with_a_user_round_trips() -> None:
    params = parse_url("amqp://u:p@[fe80::1]:5673/")
    assert params.host == "fe80::1"
    assert parse_url(params.to_url(redact=False)) == params


@pytest.mark.parametrize("url", ["amqp://x[::1]/", "amqp://[::1]x/", "amqp://x:[::1]:5672/"])
def test_text_around_a_bracketed_host_is_an_error_not_dropped(url: str) -> None:
    # Found by fuzz/fuzz_url.py: urlsplit takes the bracketed address and
    # silently drops the rest, e.g. "user:password" written without its "@".
    with pytest.raises(ValueError, match=r"must be '\[address\]' or '\[address\]:port'"):
        parse_url(url)
