"""The test session deletes the topics its tests made, and only those (tests/conftest.py)."""

from __future__ import annotations

from tests.conftest import SESSION_TAGS, session_tag, session_topics


def test_only_topics_named_with_this_sessions_tags_are_picked() -> None:
    tag = session_tag()
    assert tag in SESSION_TAGS
    mine = [f"test.{tag}.events", f"test.{tag}-2.scores", f"test.plain.{tag}.scores",
            f"fetched-{tag}", f"test.{tag}.6p-event-time.deadletter"]  # fmt: skip
    others = ["test.0123abcd.events", f"test.{tag}x.events", f"x{tag}", "engage.events",
              "__consumer_offsets", f"bench.{tag[:4]}.scores"]  # fmt: skip
    assert session_topics(mine + others) == mine
