"""Settings checked at start: each bad value named with what is allowed, unknown
SHOAL_ variables reported with the closest known name, derived from the fields."""
import pytest

from common.settings import Settings, SettingsError, known_variables, load, unknown_variables


def problems(env):
    with pytest.raises(SettingsError) as e:
        load(env)
    return e.value.problems


def test_wrong_type():
    assert problems({"SHOAL_PORT": "abc"}) == [
        "SHOAL_PORT='abc': should be a valid integer, unable to parse string as an integer"]
    (p,) = problems({"SHOAL_ALLOW_ANONYMOUS": "maybe"})
    assert p.startswith("SHOAL_ALLOW_ANONYMOUS='maybe': should be a valid boolean")
    assert problems({"SHOAL_SYNC": "sometimes"}) == ["SHOAL_SYNC='sometimes': should be 'always', 'batch' or 'off'"]


def test_every_bad_type_at_once():
    found = problems({"SHOAL_PORT": "x", "SHOAL_AUTH_BAN_TIME": "soon"})
    assert [p.split("=")[0] for p in found] == ["SHOAL_PORT", "SHOAL_AUTH_BAN_TIME"]


def test_out_of_range():
    assert problems({"SHOAL_PORT": "70000"}) == ["SHOAL_PORT='70000': should be a number from 0 to 65535"]
    assert problems({"SHOAL_WORKERS": "0", "SHOAL_MAX_CONNECTIONS": "-1"}) == [
        "SHOAL_WORKERS='0': should be a number from 1 to 1024",
        "SHOAL_MAX_CONNECTIONS='-1': should be a number >= 0",
    ]
    assert problems({"SHOAL_LOG_LEVEL": "loud"}) == [
        "SHOAL_LOG_LEVEL='loud': should be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"]


def test_good_values():
    s = load({"SHOAL_PORT": "1884", "SHOAL_MAX_PUBLISH_RATE": "2.5", "SHOAL_LOG_LEVEL": "debug"})
    assert (s.port, s.max_publish_rate) == (1884, 2.5)


def test_unknown_variables_with_the_closest_name():
    env = {"SHOAL_PROT": "1", "SHOAL_PASWORD_FILE": "x", "SHOAL_PORT": "1", "SHOAL_WORKER_ID": "2",
           "SHOAL_XYZZY": "1", "PATH": "/bin"}
    assert unknown_variables(env) == [
        ("SHOAL_PASWORD_FILE", "SHOAL_PASSWORD_FILE"),
        ("SHOAL_PROT", "SHOAL_PORT"),
        ("SHOAL_XYZZY", None),
    ]


def test_known_names_come_from_the_fields():
    """A setting added to the class is known at once (no second list to keep)."""
    assert {f"SHOAL_{f.upper()}" for f in Settings.model_fields} <= known_variables()
