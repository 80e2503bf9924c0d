"""The mosquitto-style ACL file of worker/acl.py."""

from __future__ import annotations

import pytest

from worker.acl import Acl, AclError


def test_allow_all_allows_everything():
    acl = Acl.allow_all()
    assert acl.allows_all is True
    assert acl.can_publish("c", None, "$SYS/x")
    assert acl.can_read("c", "u", "a/b")
    assert acl.can_subscribe("c", None, "#")


def test_empty_file_denies_everything():
    acl = Acl.parse("# nothing granted\n\n")
    assert acl.allows_all is False
    assert not acl.can_publish("c", None, "a")
    assert not acl.can_read("c", "u", "a")
    assert not acl.can_subscribe("c", None, "a")


def test_access_words_and_default_readwrite():
    acl = Acl.parse(
        """
        # comment
        topic r
        topic read ro
        topic write wo
        topic readwrite rw/#
          topic	deny	rw/secret
        """
    )
    assert acl.can_publish("c", None, "r") and acl.can_read("c", None, "r")
    assert acl.can_read("c", None, "ro") and not acl.can_publish("c", None, "ro")
    assert acl.can_publish("c", None, "wo") and not acl.can_read("c", None, "wo")
    assert acl.can_publish("c", None, "rw") and acl.can_read("c", None, "rw/x/y")
    assert not acl.can_publish("c", None, "rw/secret") and not acl.can_read("c", None, "rw/secret")
    assert not acl.can_read("c", None, "other")


def test_topic_may_contain_spaces_and_single_word_is_the_topic():
    acl = Acl.parse("topic read sport/tennis player1/#\ntopic read\n")
    assert acl.can_read("c", None, "sport/tennis player1/score")
    assert not acl.can_read("c", None, "sport/tennis")
    # As in mosquitto, one word after "topic" is the topic (readwrite), not an access word.
    assert acl.can_publish("c", None, "read")


def test_anonymous_and_user_sections():
    acl = Acl.parse(
        """
        topic readwrite anon/#
        user alice
        topic readwrite alice/#
        user bob smith
        topic read shared/#
        user alice
        topic read more/#
        """
    )
    # Lines before the first "user" apply to clients without username only.
    assert acl.can_publish("c", None, "anon/x")
    assert not acl.can_publish("c", "alice", "anon/x")
    assert not acl.can_publish("c", "carol", "anon/x")
    # A section applies to its user only; two sections of one user add up.
    assert acl.can_publish("c", "alice", "alice/x")
    assert acl.can_read("c", "alice", "more/x")
    assert not acl.can_read("c", None, "alice/x")
    assert not acl.can_read("c", "bob smith", "alice/x")
    assert acl.can_read("c", "bob smith", "shared/x")
    assert not acl.can_read("c", "bob", "shared/x")
    # An empty username is a username, not anonymous.
    assert not acl.can_publish("c", "", "anon/x")


def test_patterns_substitute_client_id_and_username():
    acl = Acl.parse(
        """
        pattern readwrite devices/%c/#
        pattern read users/%u/+
        pattern write out/dev-%c/%u
        """
    )
    assert acl.can_publish("d1", None, "devices/d1/temp")
    assert acl.can_read("d1", "u", "devices/d1")  # "#" covers the parent level
    assert not acl.can_publish("d1", None, "devices/d2/temp")
    assert acl.can_read("d1", "alice", "users/alice/inbox")
    assert not acl.can_publish("d1", "alice", "users/alice/inbox")
    assert not acl.can_read("d1", "alice", "users/bob/inbox")
    # A pattern with %u does not apply to a client without username.
    assert not acl.can_read("d1", None, "users/%u/inbox")
    assert not acl.can_read("d1", None, "users//inbox")
    # Substitution inside a level.
    assert acl.can_publish("d1", "alice", "out/dev-d1/alice")
    assert not acl.can_publish("d1", None, "out/dev-d1/")
    assert not acl.can_publish("d2", "alice", "out/dev-d1/alice")


def test_patterns_apply_to_every_client_wherever_they_stand():
    acl = Acl.parse("user alice\ntopic read a\npattern readwrite p/%c\n")
    assert acl.can_publish("x", None, "p/x")
    assert acl.can_publish("x", "alice", "p/x")
    assert acl.can_publish("x", "bob", "p/x")


@pytest.mark.parametrize("client_id", ["+", "#", "a/b", "d1/#", "x+y", "/"])
def test_client_id_wildcard_injection_never_substituted(client_id):
    acl = Acl.parse("pattern readwrite devices/%c/#\npattern deny devices/%c/locked\n")
    rendered = f"devices/{client_id}/x".replace("#", "q").replace("+", "p")
    assert not acl.can_publish(client_id, None, rendered)
    assert not acl.can_read(client_id, None, "devices/d1/x")
    assert not acl.can_subscribe(client_id, None, "devices/#")
    assert not acl.can_subscribe(client_id, None, f"devices/{client_id}")
    # A well-behaved client id next to it still works.
    assert acl.can_publish("d1", None, "devices/d1/x")


@pytest.mark.parametrize("username", ["+", "#", "a/b", "u/#"])
def test_username_wildcard_injection_never_substituted(username):
    acl = Acl.parse("pattern readwrite users/%u/#\n")
    assert not acl.can_read("c", username, "users/a/b")
    assert not acl.can_subscribe("c", username, "users/#")
    assert not acl.can_subscribe("c", username, f"users/{username}")


def test_empty_client_id_is_not_substituted():
    acl = Acl.parse("pattern readwrite c/%c\n")
    assert not acl.can_publish("", None, "c/")


def test_deny_wins_regardless_of_order_and_list():
    acl = Acl.parse(
        """
        topic deny a/secret
        topic readwrite a/#
        topic readwrite b/#
        topic deny b/+/private
        topic read c/#
        pattern deny c/%c/#
        user alice
        topic readwrite #
        pattern deny %u/locked
        """
    )
    assert not acl.can_read("c", None, "a/secret")
    assert acl.can_read("c", None, "a/public")
    assert not acl.can_read("c", None, "b/x/private")
    assert acl.can_read("c", None, "b/x/public")
    # A pattern deny also beats a topic grant (stricter than mosquitto 2.0,
    # which checks the user's topic rules before the patterns).
    assert not acl.can_read("me", None, "c/me/x")
    assert acl.can_read("me", None, "c/you/x")
    assert not acl.can_publish("x", "alice", "alice/locked")
    assert acl.can_publish("x", "alice", "bob/locked")


def test_deny_rule_that_does_not_grant_does_not_apply_to_other_access():
    # A read-only rule matched on a publish neither grants nor denies.
    acl = Acl.parse("topic read a/#\ntopic write a/b\n")
    assert acl.can_publish("c", None, "a/b")
    assert not acl.can_publish("c", None, "a/c")


def test_dollar_topics_need_dollar_rules():
    acl = Acl.parse("topic readwrite #\ntopic readwrite +/x\ntopic read $SYS/#\n")
    assert not acl.can_publish("c", None, "$SYS/x")
    assert acl.can_read("c", None, "$SYS/broker/uptime")
    assert not acl.can_read("c", None, "$other/x")
    assert not acl.can_subscribe("c", None, "$other/#")
    assert acl.can_subscribe("c", None, "$SYS/#")


def test_wildcards_in_publish_or_read_topic_are_refused():
    acl = Acl.parse("topic readwrite #\n")
    assert not acl.can_publish("c", None, "a/+")
    assert not acl.can_read("c", None, "a/#")
    assert not acl.can_publish("c", None, "")


# -- subscribe: the filter must be covered by a read rule ---------------------


@pytest.mark.parametrize(
    ("rule", "topic_filter", "covered"),
    [
        ("a/#", "a/+/b", True),
        ("a/#", "a/#", True),
        ("a/#", "a", True),
        ("a/#", "a/b/c/d", True),
        ("a/#", "#", False),
        ("a/#", "b/#", False),
        ("a/+", "a/+", True),
        ("a/+", "a/b", True),
        ("a/+", "a/#", False),
        ("a/+", "a/+/b", False),
        ("a/+", "a", False),
        ("a/b", "a/b", True),
        ("a/b", "a/+", False),
        ("a/b", "a/#", False),
        ("+/+", "+/b", True),
        ("+/#", "a", True),
        ("#", "#", True),
        ("#", "+/+/#", True),
        ("#", "$SYS/#", False),
        ("$SYS/#", "$SYS/+/x", True),
        ("+/b", "$SYS/b", False),
    ],
)
def test_subscribe_coverage(rule, topic_filter, covered):
    acl = Acl.parse(f"topic read {rule}\n")
    assert acl.can_subscribe("c", None, topic_filter) is covered


def test_subscribe_needs_read_access():
    acl = Acl.parse("topic write a/#\n")
    assert not acl.can_subscribe("c", None, "a/b")


def test_subscribe_denied_when_a_deny_rule_covers_the_filter():
    acl = Acl.parse("topic read a/#\ntopic deny a/+/secret\ntopic deny a/x/#\n")
    assert not acl.can_subscribe("c", None, "a/b/secret")
    assert not acl.can_subscribe("c", None, "a/+/secret")
    assert not acl.can_subscribe("c", None, "a/x")
    assert not acl.can_subscribe("c", None, "a/x/+")
    # Overlapping, not covered: granted; the denied messages are withheld by can_read.
    assert acl.can_subscribe("c", None, "a/#")
    assert acl.can_subscribe("c", None, "a/+/+")
    assert not acl.can_read("c", None, "a/b/secret")


def test_subscribe_with_patterns():
    acl = Acl.parse("pattern read in/%c/#\n")
    assert acl.can_subscribe("d1", None, "in/d1/#")
    assert acl.can_subscribe("d1", None, "in/d1/+/x")
    assert not acl.can_subscribe("d1", None, "in/+/#")
    assert not acl.can_subscribe("d1", None, "in/#")


def test_subscribe_shared_is_checked_on_its_filter():
    acl = Acl.parse("topic read jobs/#\n")
    assert acl.can_subscribe("c", None, "$share/workers/jobs/+")
    assert not acl.can_subscribe("c", None, "$share/workers/other")


def test_subscribe_invalid_filter_refused():
    acl = Acl.parse("topic read #\n")
    assert not acl.can_subscribe("c", None, "a/#/b")
    assert not acl.can_subscribe("c", None, "$share/g")


def test_paho_interoperability_acl():
    # The ACL used to run the Paho interoperability suite.
    acl = Acl.parse("topic readwrite #\ntopic deny test/nosubscribe\n")
    assert acl.can_subscribe("myclientid", None, "test/nosubscribe") is False
    assert acl.can_subscribe("myclientid", None, "test/#") is True
    assert acl.can_subscribe("myclientid", None, "test/+") is True
    assert acl.can_subscribe("myclientid", None, "#") is True
    assert acl.can_read("myclientid", None, "test/nosubscribe") is False
    assert acl.can_read("myclientid", None, "test/other") is True
    assert acl.can_publish("myclientid", None, "test/nosubscribe") is False
    assert acl.can_publish("myclientid", None, "TopicA/B") is True


# -- errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("topic", "empty topic"),
        ("pattern", "empty pattern"),
        ("user", "missing username"),
        ("topic readonly a/b", "invalid access 'readonly'"),
        ("topic read a/#/b", "invalid topic 'a/#/b'"),
        ("topic read a+", "invalid topic 'a+'"),
        ("tpoic read a", "unknown keyword 'tpoic'"),
        ("  # a comment may be indented", None),
    ],
)
def test_bad_line_names_path_and_line(tmp_path, line, words):
    path = tmp_path / "acl.conf"
    path.write_text(f"# header\ntopic read ok\n\n{line}\ntopic read after\n")
    if words is None:
        assert Acl.load(path).can_read("c", None, "after")
        return
    with pytest.raises(AclError) as info:
        Acl.load(path)
    err = info.value
    assert err.path == str(path)
    assert err.line == 4
    assert str(err) == f"{path}:4: {words}" or str(err).startswith(f"{path}:4: {words} ")


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.acl"
    with pytest.raises(AclError) as info:
        Acl.load(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: cannot read ACL file")


def test_load_reads_file(tmp_path):
    path = tmp_path / "acl"
    path.write_text("user alice\ntopic readwrite alice/#\n")
    acl = Acl.load(path)
    assert acl.can_publish("c", "alice", "alice/x")
    assert not acl.can_publish("c", None, "alice/x")
