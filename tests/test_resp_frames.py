"""consumer/resp_frames.py: commands framed from columns are hiredis's bytes, exactly."""

from __future__ import annotations

import math
import random

import hiredis
import pytest

from consumer.resp_frames import Same, float_texts, frame, frame_sets, rows_of


def _hiredis(command: str, columns: list) -> bytes:
    return b"".join(hiredis.pack_command((command, *row)) for row in rows_of(columns))


def _values(rng: random.Random, kind: str, n: int) -> list:
    def one() -> object:
        pick = kind if kind != "mixed" else rng.choice(["bytes", "ascii", "text", "int", "float"])
        if pick == "bytes":
            return rng.randbytes(rng.randrange(0, 40))  # any byte: NUL, CR, LF
        if pick == "ascii":
            return "".join(rng.choice("ab:{}%\r\n 0") for _ in range(rng.randrange(0, 12)))
        if pick == "text":
            return rng.choice(["médium", "東京", "", "a\x00b", "😀x"])
        if pick == "int":
            return rng.choice([0, -1, 7, 10**18, -(10**25), 2**63])
        return rng.choice([0.0, -0.0, 0.1, 63.27, 1e16, 1e-7, 2.5e300, math.inf, -math.inf,
                           math.nan, rng.random() * 1e6])  # fmt: skip

    return [one() for _ in range(n)]


@pytest.mark.parametrize("kind", ["bytes", "ascii", "text", "int", "float", "mixed"])
def test_columns_frame_as_hiredis_packs_each_command(kind: str) -> None:
    rng = random.Random(kind)
    for n in (1, 2, 37):
        keys = [f"k:{{{i}}}:é" if i % 5 == 0 else f"k:{i}" for i in range(n)]
        columns = [keys, Same("field"), _values(rng, kind, n), Same(b"\x00raw"),
                   _values(rng, "mixed", n), Same(3600), Same(0.5)]  # fmt: skip
        assert frame("HSET", columns) == _hiredis("HSET", columns)


def test_a_value_hiredis_refuses_is_refused_the_same_way() -> None:
    for bad in (True, None, [1]):
        columns = [["k1", "k2"], ["ok", bad]]
        with pytest.raises(TypeError):
            hiredis.pack_command(("SET", "k2", bad))
        with pytest.raises(TypeError):
            frame("SET", columns)


def test_a_subclass_hiredis_takes_goes_through_hiredis() -> None:
    """A str or float subclass (numpy's float64): hiredis packs it; so does the fallback."""

    class Text(str):
        pass

    import numpy as np

    columns = [["k1", "k2"], [Text("a"), np.float64(0.25)]]
    assert frame("SET", columns) == _hiredis("SET", columns)


def test_column_lengths_must_agree() -> None:
    with pytest.raises(ValueError):
        frame("SET", [["k1", "k2"], ["v"]])
    with pytest.raises(ValueError):
        frame("SET", [Same("k"), Same("v")])
    assert frame("SET", [[], []]) == b""


@pytest.mark.parametrize(
    "value",
    ["v1", "", "東京", b"\x00\r\n", 7, 10**20, 0.25, -3.5, 1e16, math.inf, 0.0, -0.0],
)
def test_a_column_of_one_value_frames_as_hiredis_packs_it(value: object) -> None:
    """A column whose values are all equal is framed once for all (a served score's model
    version, domain, time of update): the bytes are still each command's own."""
    for n in (1, 3):
        columns = [[f"k{i}" for i in range(n)], [value] * n, Same("f")]
        assert frame("HSET", columns) == _hiredis("HSET", columns)


@pytest.mark.parametrize(
    "values", [[0.0, -0.0, 0.0], [-0.0, 0.0], [1, 1.0, 1], [math.nan, math.nan], [1, True]]
)
def test_equal_values_of_another_text_keep_their_own(values: list) -> None:
    """Values that compare equal but pack apart (0.0 and -0.0, 1 and 1.0, NaN and itself)
    are each framed as hiredis packs it; a bool is refused as hiredis refuses it."""
    columns = [[f"k{i}" for i in range(len(values))], values]
    if any(type(v) is bool for v in values):
        with pytest.raises(TypeError):
            frame("SET", columns)
        return
    assert frame("SET", columns) == _hiredis("SET", columns)


@pytest.mark.parametrize(
    "values",
    [
        [0, -1, 7, 10, 99, 100, -100, 10**18, 2**63 - 1, -(2**63) + 1],
        [-(2**63), 5],  # int64's least: written another way (its negation overflows)
        [2**63, 1],  # past int64
        [1, 2, 3.5],  # an int column only at first
        [1, True],
    ],
)
def test_int_columns_written_by_the_kernel_are_hiredis_digits(values: list) -> None:
    """Ints within int64 have their digits written by the compiled framing (a served
    score's event time); any other int column is framed as before."""
    n = len(values)
    columns = [[f"k{i}" for i in range(n)], Same("ts"), values, [-3] * n, list(range(n))]
    if any(type(v) is bool for v in values):
        with pytest.raises(TypeError):
            frame("HSET", columns)
        return
    assert frame("HSET", columns) == _hiredis("HSET", columns)


def test_a_str_column_with_another_type_deep_inside_is_framed_as_hiredis_does() -> None:
    """A column of str is joined without looking at each value's type first: a value of
    another type (late in the column) still gets hiredis's own text or refusal."""
    n = 50
    for odd in (b"raw", 7, 0.5, "東京"):
        values: list[object] = [f"v{i}" for i in range(n)]
        values[n - 2] = odd
        columns = [[f"k{i}" for i in range(n)], values]
        assert frame("SET", columns) == _hiredis("SET", columns)
    values[n - 2] = None
    with pytest.raises(TypeError):
        frame("SET", [[f"k{i}" for i in range(n)], values])


def test_a_column_of_one_text_with_a_str_subclass_or_equal_bytes_frames_as_hiredis() -> None:
    """A str equals only a str (a subclass has the same text); bytes equal to the first value
    may be another type hiredis refuses (bytearray): the column is then refused as it is."""

    class Text(str):
        pass

    columns = [["k1", "k2", "k3"], ["a", Text("a"), "a"]]
    assert frame("SET", columns) == _hiredis("SET", columns)
    with pytest.raises(TypeError):
        frame("SET", [["k1", "k2", "k3"], [b"a", bytearray(b"a"), b"a"]])


@pytest.mark.parametrize("kind", ["bytes", "ascii", "text", "int", "mixed"])
def test_sets_frame_as_hiredis_packs_each_command(kind: str) -> None:
    """`frame_sets` (SADD of each user's new items): a key and any number of members a
    command, the bytes hiredis packs command by command."""
    rng = random.Random(kind)
    keys = [f"u:{{{i}}}:items" if i % 3 else f"u:{{é{i}}}:items" for i in range(30)]
    members = [_values(rng, kind, rng.choice([1, 1, 2, 7, 40])) for _ in keys]
    pairs = zip(keys, members, strict=True)
    expected = b"".join(hiredis.pack_command(("SADD", k, *m)) for k, m in pairs)
    assert frame_sets("SADD", keys, members) == expected


def test_sets_refuse_what_hiredis_refuses_and_need_a_member_a_key() -> None:
    with pytest.raises(TypeError):
        frame_sets("SADD", ["k1", "k2"], [["a"], ["b", True]])
    with pytest.raises(ValueError):
        frame_sets("SADD", ["k1", "k2"], [["a"], []])
    with pytest.raises(ValueError):
        frame_sets("SADD", ["k1"], [["a"], ["b"]])
    assert frame_sets("SADD", [], []) == b""


@pytest.mark.parametrize("repeats", [1, 3, 50])
def test_float_texts_are_each_floats_repr(repeats: int) -> None:
    """`float_texts` makes each distinct value's text once: the texts are still each value's
    own (0.0 and -0.0 are one key of its table, NaN is not equal to itself)."""
    rng = random.Random(repeats)
    base = [0.0, -0.0, 58.33, 100.0, 1e16, 1e-7, math.inf, -math.inf, math.nan, 0.1, 2.5]
    values = [rng.choice(base) for _ in range(len(base) * repeats)] + base
    assert float_texts(values) == [repr(v) for v in values]
    columns = [[f"k{i}" for i in range(len(values))], values]
    assert frame("SET", columns) == _hiredis("SET", columns)
