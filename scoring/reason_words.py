"""Model reasons in words, like the rule reasons, rendered where someone reads them.

A model reason is a feature and its contribution to the margin (what the consumer stores and
publishes); the words come from that feature's declared `phrase` in `features.spec` (its
grammar is in that module's docstring), with the feature's value when it is known (request-time
scoring) and without a number when it is not (a stored or published reason).

>>> phrase("u_events", 12.0), phrase("u_events")
('12 events so far', 'events so far')
>>> phrase("u_top_share", 0.4), phrase("u_top_share"), phrase("u_top_share", -1.0)
('gave 5 stars or more in 40% of ratings', 'how often gave 5 stars or more', 'no ratings yet')
>>> phrase("ctx_mobile", 1.0), phrase("ctx_mobile", 0.0), phrase("ctx_mobile")
('on a mobile device', 'not on a mobile device', 'whether on a mobile device')
>>> reason_text("u_rating_mean", -0.2213, 2.61)
'average rating given 2.61 (-0.22)'
>>> worded([{"feature": "s_events", "contribution": 0.31}])
[{'feature': 's_events', 'contribution': 0.31, 'text': 'events in this session'}]
"""

from __future__ import annotations

import calendar
import math
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from features.spec import FEATURE_BY_NAME

_VALUE_PART = re.compile(r"\[([^\]]*)\]")


class _Formatter(string.Formatter):
    """`str.format` plus two specs: `weekday` (0 = Monday) and `expm1` (undo a log1p)."""

    def format_field(self, value: Any, format_spec: str) -> str:
        if format_spec == "weekday":
            return calendar.day_name[int(value) % 7]
        if format_spec == "expm1":
            amount = math.expm1(min(float(value), 700.0))  # e^700: no overflow, still huge
            return f"{amount:,.0f}" if abs(amount) < 1e12 else f"{amount:.3g}"
        return str(super().format_field(value, format_spec))


_FORMAT = _Formatter()


def _tidy(text: str) -> str:
    return " ".join(text.split())


def phrase(feature: str, value: float | None = None) -> str:
    """The feature in words: with its value when given (and finite), else without a number.
    A feature the spec does not declare (a reason stored by an older model) reads as its
    name."""
    entry = FEATURE_BY_NAME.get(feature)
    if entry is None or not entry.phrase:
        return feature
    x = value if value is not None and math.isfinite(value) else None
    template, _, sentinel = entry.phrase.partition("||")
    if x is not None and sentinel:
        when, _, words = sentinel.partition(":")
        if float(when) == x:
            return _tidy(words)
    if entry.dtype == "flag":
        yes, _, no = template.partition("|")
        if x is None:
            return _tidy(f"whether {yes}")
        return _tidy(yes if x >= 0.5 else no)
    if x is None:
        return _tidy(_VALUE_PART.sub(lambda m: m[1].partition("|")[2], template))
    with_value = _VALUE_PART.sub(lambda m: m[1].partition("|")[0], template)
    return _tidy(_FORMAT.format(with_value, value=x))


def reason_text(feature: str, contribution: float, value: float | None = None) -> str:
    """One model reason as one line of words: the phrase and the signed contribution to the
    margin, e.g. "12 events in this session (+0.31)"."""
    return f"{phrase(feature, value)} ({contribution:+.2f})"


def worded(
    reasons: Iterable[Mapping[str, Any]], values: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """Model reasons ({feature, contribution}, as stored) with their `text` added: the phrase,
    with the feature's value from `values` when it holds one. The other keys are kept."""
    out = []
    for reason in reasons:
        feature = str(reason.get("feature", ""))
        value = values.get(feature) if values is not None else None
        out.append({**reason, "text": phrase(feature, value)})
    return out
