"""Property tests of the request validator against DESIGN.md's rules (tests/design_rules.py).

``validate`` never raises; it accepts exactly what the rules allow, and when it refuses it
names every field that breaks a rule and no other.
"""

from __future__ import annotations

import string
from collections.abc import Mapping

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from service import params
from service.params import Invalid, TrackingRequest, validate
from tests import design_rules
from tests.conftest import CANONICAL_QUERY

FIELDS = tuple(design_rules.RULES)
# A valid value for every field, the optional count included.
EXAMPLE = {
    **CANONICAL_QUERY,
    "count": "3",
    "label": "pdf",
    "scheme": "s10",
    "service_indicator": "RR",
}
# The example database and derandomisation come from the profile (tests/conftest.py).
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def query_of(values: Mapping[str, str], plus: bool = False) -> str:
    return "&".join(f"{name}={design_rules.encode(value, plus)}" for name, value in values.items())


def check_verdict(values: dict[str, str], raw: str) -> None:
    """``validate(raw)`` agrees with the rules on every one of ``values``."""
    verdicts = {name: design_rules.RULES[name](value) for name, value in values.items()}
    assume(None not in verdicts.values())  # the contract does not say; checked elsewhere
    result = validate(raw)
    bad = {name for name, verdict in verdicts.items() if not verdict}
    missing = set(design_rules.REQUIRED) - set(values)
    across = design_rules.s10_problems(values)
    if not bad and not missing and not across:
        assert isinstance(result, TrackingRequest), (values, result)
        for name, value in values.items():
            assert getattr(result, name) == design_rules.normalised(name, value), name
    else:
        assert isinstance(result, Invalid), (values, result)
        problems = result.problems
        assert set(problems) == bad | missing | set(across), (values, result)
        for name in missing:
            assert problems[name] == [params.MISSING]
        for name in bad:
            assert problems[name] == [params.RULES[name]], (name, values[name])
        for name, rule in across.items():
            assert problems[name] == [getattr(params, rule)], (name, values)


def assert_a_verdict(raw: str) -> None:
    """``validate`` returns a request, or ``Invalid`` with problems keyed by our fields; it
    never raises."""
    result = validate(raw)
    if isinstance(result, TrackingRequest):
        return
    assert isinstance(result, Invalid)
    assert set(result.problems) <= set(FIELDS)
    for messages in result.problems.values():
        assert messages
        assert all(isinstance(message, str) and message for message in messages)


def test_the_rules_know_every_field_the_validator_reads() -> None:
    # A field the rules do not know is drawn as an "unknown" parameter, and the properties
    # below then fail at random (count did, once in 25 runs).
    assert set(design_rules.RULES) == set(params.FIELDS)
    assert set(design_rules.REQUIRED) == set(params.REQUIRED)


@SETTINGS
@given(st.text())
@example("")
@example("&&&==&%")
@example("weight=%")
@example("customer_name=%C0%AF")
@example("%ff=1&weight=%ff")
@example("weight=1&weight=2&weight=%zz")
def test_validate_never_raises_on_any_query_string(raw: str) -> None:
    assert_a_verdict(raw)


_query_pieces = st.lists(
    st.one_of(
        st.sampled_from(FIELDS),
        st.sampled_from(["=", "&", "%", "+", "%2", "%zz", "%ff", "%e2%82", "%00", ";"]),
        st.text(string.printable, max_size=6),
        st.text(max_size=4),
    ),
    max_size=30,
).map("".join)


@SETTINGS
@given(_query_pieces)
def test_validate_never_raises_on_queries_made_of_our_field_names_and_escapes(raw: str) -> None:
    assert_a_verdict(raw)


@SETTINGS
@given(field=st.sampled_from(FIELDS), data=st.data(), plus=st.booleans())
def test_every_value_the_rules_allow_is_accepted(
    field: str, data: st.DataObject, plus: bool
) -> None:
    value = data.draw(design_rules.VALID_VALUES[field], label=field)
    assert design_rules.RULES[field](value) is True  # the generator keeps to the rules
    # The S10 fields come together (design_rules.s10_problems).
    partner = {"scheme": "service_indicator", "service_indicator": "scheme"}.get(field)
    values = {**CANONICAL_QUERY, **({partner: EXAMPLE[partner]} if partner else {}), field: value}
    result = validate(query_of(values, plus))
    assert isinstance(result, TrackingRequest), (field, value, result)
    assert getattr(result, field) == design_rules.normalised(field, value)


@SETTINGS
@given(field=st.sampled_from(FIELDS), data=st.data(), plus=st.booleans())
def test_one_field_at_a_time_is_judged_as_the_rules_say(
    field: str, data: st.DataObject, plus: bool
) -> None:
    value = data.draw(design_rules.VALUES[field], label=field)
    values = {**CANONICAL_QUERY, field: value}
    check_verdict(values, query_of(values, plus))


@st.composite
def requests(draw: st.DrawFn) -> dict[str, str]:
    """Some fields (maybe all, maybe none), each valid or not, in any order."""
    chosen = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=len(FIELDS)))
    values = {}
    for name in chosen:
        valid = draw(st.booleans())
        strategy = design_rules.VALID_VALUES[name] if valid else design_rules.VALUES[name]
        values[name] = draw(strategy, label=name)
    return values


@SETTINGS
@given(values=requests(), plus=st.booleans())
def test_every_bad_or_missing_field_is_named_and_no_other(
    values: dict[str, str], plus: bool
) -> None:
    check_verdict(values, query_of(values, plus))


@SETTINGS
@given(
    values=requests(),
    unknown=st.dictionaries(
        st.text(string.ascii_letters + "_[].", min_size=1, max_size=10).filter(
            lambda name: name not in params.FIELDS  # count is optional, not unknown
        ),
        st.text(max_size=10),
        max_size=20,
    ),
)
def test_unknown_parameters_change_nothing(values: dict[str, str], unknown: dict[str, str]) -> None:
    mixed = query_of({**unknown, **values})
    assert validate(mixed) == validate(query_of(values))


@SETTINGS
@given(values=requests(), repeated=st.lists(st.sampled_from(FIELDS), min_size=1, unique=True))
def test_a_repeated_field_is_refused_whatever_its_values(
    values: dict[str, str], repeated: list[str]
) -> None:
    pairs = list(values.items()) + [(name, EXAMPLE[name]) for name in repeated]
    pairs += [(name, EXAMPLE[name]) for name in repeated if name not in values]
    raw = "&".join(f"{name}={design_rules.encode(value, False)}" for name, value in pairs)
    result = validate(raw)
    assert isinstance(result, Invalid)
    for name in repeated:
        assert result.problems[name] == [params.REPEATED]


def test_year_0000_is_judged_the_same_whatever_the_day() -> None:
    accepted = {
        created_at: isinstance(
            validate(query_of({**CANONICAL_QUERY, "created_at": created_at})), TrackingRequest
        )
        for created_at in ("0000-01-28T00:00:00Z", "0000-01-31T00:00:00Z", "0000-02-29T00:00:00Z")
    }
    assert all(accepted.values()), accepted


def test_created_at_knows_every_day_of_a_400_year_cycle() -> None:
    # Exhaustive where the properties above sample: the calendar lives in the pattern.
    for year in [*range(400), 1900, 2000, 2100, 9999]:
        for month in range(14):
            for day in range(33):
                value = f"{year:04d}-{month:02d}-{day:02d}T00:00:00Z"
                raw = query_of({**CANONICAL_QUERY, "created_at": value})
                valid = isinstance(validate(raw), TrackingRequest)
                assert valid == design_rules.created_at(value), value
