import unicodedata
from itertools import product
from string import ascii_uppercase
from urllib.parse import urlencode

import pycountry
import pytest

from service import params
from service.params import (
    BAD_ENCODING,
    EXAMPLE,
    FIELDS,
    MISSING,
    REPEATED,
    REQUIRED,
    RULES,
    Errors,
    Invalid,
    TrackingRequest,
    validate,
)

DESIGN_FIELDS = {
    "origin_country_id",
    "destination_country_id",
    "weight",
    "created_at",
    "customer_id",
    "customer_name",
    "customer_slug",
}
COUNTRY_FIELDS = ["origin_country_id", "destination_country_id"]
ASSIGNED = {country.alpha_2 for country in pycountry.countries}


def query(**overrides: str) -> str:
    return urlencode({**EXAMPLE, **overrides})


def query_without(*names: str) -> str:
    return urlencode({k: v for k, v in EXAMPLE.items() if k not in names})


def accepted(raw: str) -> TrackingRequest:
    result = validate(raw)
    assert isinstance(result, TrackingRequest), result
    return result


def rejected(raw: str) -> Errors:
    result = validate(raw)
    assert isinstance(result, Invalid), result
    return result.problems


def as_dict(request: TrackingRequest) -> dict[str, str]:
    return {name: getattr(request, name) for name in REQUIRED}


def assert_valid(field: str, value: str, expected: str | None = None) -> None:
    request = accepted(query(**{field: value}))
    assert as_dict(request) == {**EXAMPLE, field: value if expected is None else expected}


def assert_invalid(field: str, value: str) -> None:
    assert rejected(query(**{field: value})) == {field: [RULES[field]]}


OPTIONAL_FIELDS = {"count", "label", "scheme", "service_indicator"}


def test_fields_are_those_of_the_design_and_the_optional_ones() -> None:
    assert set(FIELDS) == DESIGN_FIELDS | OPTIONAL_FIELDS
    assert set(REQUIRED) == DESIGN_FIELDS
    assert set(RULES) == DESIGN_FIELDS | OPTIONAL_FIELDS
    assert set(EXAMPLE) == DESIGN_FIELDS


def test_canonical_query_is_accepted_unchanged() -> None:
    assert as_dict(accepted(urlencode(EXAMPLE))) == EXAMPLE


def test_empty_query_lists_every_field_as_missing() -> None:
    assert rejected("") == {field: [MISSING] for field in DESIGN_FIELDS}


@pytest.mark.parametrize("field", sorted(DESIGN_FIELDS))
def test_each_missing_field_is_reported(field: str) -> None:
    assert rejected(query_without(field)) == {field: [MISSING]}


@pytest.mark.parametrize("field", sorted(DESIGN_FIELDS))
def test_empty_value_is_invalid_not_missing(field: str) -> None:
    assert_invalid(field, "")


def test_every_bad_and_missing_field_is_reported_together() -> None:
    bad = {
        "origin_country_id": "XX",
        "weight": "0",
        "created_at": "2018-11-20T19:29:32",
        "customer_id": "not-a-uuid",
    }
    raw = query_without("customer_slug", *bad) + "&" + urlencode(bad) + "&customer_name=again"
    assert rejected(raw) == {
        **{field: [RULES[field]] for field in bad},
        "customer_name": [REPEATED],
        "customer_slug": [MISSING],
    }


def test_every_bad_field_is_reported_when_all_are_bad() -> None:
    bad = {
        "origin_country_id": "ZZ",
        "destination_country_id": "mY",
        "weight": "1e3",
        "created_at": "2018-02-30T00:00:00Z",
        "customer_id": "{de619854-b59b-425e-9db4-943979e1bd49}",
        "customer_name": " ",
        "customer_slug": "Red_Box",
    }
    assert rejected(urlencode(bad)) == {field: [RULES[field]] for field in DESIGN_FIELDS}


@pytest.mark.parametrize("field", COUNTRY_FIELDS)
def test_every_assigned_country_code_is_accepted(field: str) -> None:
    assert len(ASSIGNED) == 249
    for code in sorted(ASSIGNED):
        assert getattr(accepted(query(**{field: code})), field) == code


@pytest.mark.parametrize("field", COUNTRY_FIELDS)
def test_every_unassigned_two_letter_code_is_rejected(field: str) -> None:
    for code in map("".join, product(ascii_uppercase, repeat=2)):
        if code not in ASSIGNED:
            assert rejected(query(**{field: code})) == {field: [RULES[field]]}, code
            assert rejected(query(**{field: code.lower()})) == {field: [RULES[field]]}, code


@pytest.mark.parametrize("field", COUNTRY_FIELDS)
@pytest.mark.parametrize(("value", "expected"), [("my", "MY"), ("id", "ID"), ("us", "US")])
def test_lower_case_countries_are_upper_cased(field: str, value: str, expected: str) -> None:
    assert_valid(field, value, expected)


@pytest.mark.parametrize("field", COUNTRY_FIELDS)
@pytest.mark.parametrize(
    "value",
    [
        "XX",
        "ZZ",
        "AA",
        "QQ",
        "QM",
        "XA",
        "EU",
        "UK",
        "xx",
        "zz",
        "mY",
        "My",
        "MYS",
        "mys",
        "M",
        " MY",
        "MY ",
        "MY\n",
        "M1",
        "\u0131d",
        "\u017fg",
        "\uff2d\uff39",
    ],
)
def test_invalid_countries_are_rejected(field: str, value: str) -> None:
    assert_invalid(field, value)


@pytest.mark.parametrize(
    "value", ["1.234", "0.001", "1", "999999.999", "10.5", "100", "0.5", "123456", "10"]
)
def test_valid_weights_are_accepted(value: str) -> None:
    assert_valid("weight", value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("000001.5", "1.5"),
        ("1.0", "1"),
        ("1.500", "1.5"),
        ("0.100", "0.1"),
        ("00.001", "0.001"),
        ("010", "10"),
        ("000100.000", "100"),
        ("999999.990", "999999.99"),
    ],
)
def test_weights_lose_leading_and_trailing_zeros(value: str, expected: str) -> None:
    # Equal weights are one value: in the answer, the audit line and the idempotency key's
    # fingerprint. The digit limits apply to the weight as sent.
    assert_valid("weight", value, expected)


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "0.0",
        "0.000",
        "1.2345",
        "0.0001",
        "-1",
        "+1",
        "1e3",
        "1E3",
        "NaN",
        "nan",
        "inf",
        "Infinity",
        " 1",
        "1 ",
        "1.",
        ".5",
        "1234567",
        "1000000.0",
        "1,5",
        "1.2.3",
        "0x1",
        "1_000",
        "\u0661",
        "\uff11",
        "1\n",
        "",
    ],
)
def test_invalid_weights_are_rejected(value: str) -> None:
    assert_invalid("weight", value)


def test_unencoded_plus_sign_in_weight_is_a_space_and_rejected() -> None:
    raw = query_without("weight") + "&weight=+1"
    assert rejected(raw) == {"weight": [RULES["weight"]]}


@pytest.mark.parametrize(
    "value",
    [
        "2018-11-20T19:29:32Z",
        "2018-11-20T19:29:32z",
        "2018-11-20T19:29:32+08:00",
        "2018-11-20T19:29:32-05:30",
        "2018-11-20T19:29:32+00:00",
        "2018-11-20T19:29:32-00:00",
        "2018-11-20T19:29:32.5Z",
        "2018-11-20T19:29:32.123456+08:00",
        "2018-11-20T19:29:32.123456789-05:30",
        "2018-11-20t19:29:32+08:00",
        "2018-11-20t19:29:32z",
        "2020-02-29T00:00:00Z",
        "2000-02-29T00:00:00Z",
        "2018-12-31T23:59:59+23:59",
        "2016-12-31T23:59:60Z",
        pytest.param("2018-11-20T19:29:32.123456789012+08:00", id="twelve-digit-fraction"),
    ],
)
def test_valid_timestamps_are_accepted(value: str) -> None:
    assert_valid("created_at", value)


@pytest.mark.parametrize(
    "value",
    [
        "2018-11-20T19:29:32",
        "2018-11-20T19:29:32.5",
        "2018-11-20T19:29:32+0800",
        "2018-11-20T19:29:32+08",
        "2018-11-20T19:29:32+24:00",
        "2018-11-20T19:29:32+08:60",
        "2018-11-20",
        "2018-11-20Z",
        "19:29:32Z",
        "2018-13-20T19:29:32Z",
        "2018-00-20T19:29:32Z",
        "2018-11-00T19:29:32Z",
        "2018-11-32T19:29:32Z",
        "2018-02-30T00:00:00Z",
        "2018-04-31T00:00:00Z",
        "2019-02-29T00:00:00Z",
        "1900-02-29T00:00:00Z",
        "2018-11-20T24:00:00Z",
        "2018-11-20T19:60:32Z",
        "2018-11-20T19:29:61Z",
        "2018-11-20T19:29Z",
        "2018-11-20T19:29:32.Z",
        "2018-11-20T19:29:32Z\n",
        " 2018-11-20T19:29:32Z",
        "18-11-20T19:29:32Z",
        "20181120T192932Z",
        "2018-11-20T19:29:32ZZ",
        "\u0662\u0660\u0661\u0668-11-20T19:29:32Z",
        "now",
    ],
)
def test_invalid_timestamps_are_rejected(value: str) -> None:
    assert_invalid("created_at", value)


@pytest.mark.parametrize(
    "value",
    [
        "de619854-b59b-425e-9db4-943979e1bd49",
        "DE619854-B59B-425E-9DB4-943979E1BD49",
        "00000000-0000-0000-0000-000000000000",
    ],
)
def test_valid_customer_ids_are_accepted_in_lower_case(value: str) -> None:
    assert_valid("customer_id", value, value.lower())


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "de619854b59b425e9db4943979e1bd49",
        "{de619854-b59b-425e-9db4-943979e1bd49}",
        "urn:uuid:de619854-b59b-425e-9db4-943979e1bd49",
        "de619854-b59b-425e-9db4-943979e1bd4",
        "de619854-b59b-425e-9db4-943979e1bd490",
        "ge619854-b59b-425e-9db4-943979e1bd49",
        "de619854-b59b-425e-9db4-943979e1bd49\n",
        " de619854-b59b-425e-9db4-943979e1bd49",
        "de619854_b59b_425e_9db4_943979e1bd49",
        "12345",
    ],
)
def test_invalid_customer_ids_are_rejected(value: str) -> None:
    assert_invalid("customer_id", value)


@pytest.mark.parametrize(
    "value",
    [
        "RedBox Logistics",
        "a",
        "x" * 255,
        "\U0001f4e6" * 255,
        "红盒物流",
        "صندوق أحمر",
        "Красная коробка",
        "📦 RedBox ✈️",
        "Ñandú Envíos S.A.",
        "O'Brien & Sons",
        "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # ZWJ: a family emoji
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # ZWNJ in Persian
        "Jose\u0301",  # a combining accent after its letter
        "\ud64d\uae38\ub3d9",
        "Red\u3000Box",
    ],
)
def test_valid_customer_names_are_accepted(value: str) -> None:
    assert_valid("customer_name", value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  RedBox Logistics  ", "RedBox Logistics"),
        ("\u3000红盒\u00a0", "红盒"),
        (" " + "x" * 255 + " ", "x" * 255),
    ],
)
def test_customer_names_are_trimmed(value: str, expected: str) -> None:
    assert_valid("customer_name", value, expected)


@pytest.mark.parametrize(
    "value",
    [
        "",
        " ",
        " \t  ",
        "\u3000",
        "x" * 256,
        " " + "x" * 256 + " ",
        "\U0001f4e6" * 256,
        "Red\x00Box",
        "Red\nBox",
        "Red\rBox",
        "Red\tBox",
        "Red\x1bBox",
        "Red\x7fBox",
        "Red\x85Box",
        "Red\x9fBox",
        "RedBox\x00",
        "\x7fRedBox",
        "\tRedBox",
        "RedBox\n",
        "RedBox\x85",
        "\x1fRedBox",
        # Invisible only, once trimmed.
        "\u200b",
        "\ufeff",
        " \u200b\ufeff ",
        "\u200d",
        "\u200c\u200d",
        "\u0301",
        "\u3164",
        "\u115f\u1160",
        "\uffa0",
        "\u2800",
        # Format characters other than ZWJ and ZWNJ.
        "Red\u202eBox",
        "\u202exoBdeR",
        "Red\u2066Box\u2069",
        "Red\u200bBox",
        "Red\u00adBox",
        "RedBox\ufeff",
        "Red\U000e0041Box",
        # Private-use, unassigned and non-characters.
        "Red\ue000Box",
        "Red\U000f0000Box",
        "\U0010fffd",
        "Red\u0378Box",
        "Red\U0002fffdBox",
        "Red\ufdd0Box",
        "Red\uffffBox",
        "Red\U0001fffeBox",
    ],
)
def test_invalid_customer_names_are_rejected(value: str) -> None:
    assert_invalid("customer_name", value)


@pytest.mark.parametrize(
    "value",
    ["redbox-logistics", "a", "abc-123", "123", "a-b-c", "x" * 255, "a" + "-b" * 127],
)
def test_valid_slugs_are_accepted(value: str) -> None:
    assert_valid("customer_slug", value)


@pytest.mark.parametrize(
    "value",
    [
        "RedBox-logistics",
        "REDBOX",
        "-redbox",
        "redbox-",
        "redbox--logistics",
        "-",
        "redbox_logistics",
        "redbox logistics",
        " redbox",
        "redbox\n",
        "redbox.logistics",
        "r\u00e9dbox",
        "\uff11",
        "x" * 256,
        "a" + "-b" * 127 + "c",
    ],
)
def test_invalid_slugs_are_rejected(value: str) -> None:
    assert_invalid("customer_slug", value)


@pytest.mark.parametrize("field", sorted(DESIGN_FIELDS))
def test_a_repeated_parameter_is_reported(field: str) -> None:
    raw = query() + "&" + urlencode({field: EXAMPLE[field]})
    assert rejected(raw) == {field: [REPEATED]}


def test_a_repeated_parameter_with_different_values_is_reported() -> None:
    raw = query_without("weight") + "&weight=1&weight=2"
    assert rejected(raw) == {"weight": [REPEATED]}


def test_a_parameter_repeated_under_an_encoded_name_is_reported() -> None:
    raw = query() + "&w%65ight=1.234"
    assert rejected(raw) == {"weight": [REPEATED]}


def test_unknown_parameters_are_ignored() -> None:
    raw = "utm_source=mail&" + query() + "&foo=bar&foo=baz&&x=%zz&%ff=1&flag&=empty"
    assert as_dict(accepted(raw)) == EXAMPLE


@pytest.mark.parametrize(
    ("raw_value", "expected"),
    [
        ("RedBox%20Logistics", "RedBox Logistics"),
        ("RedBox+Logistics", "RedBox Logistics"),
        ("RedBox%2BLogistics", "RedBox+Logistics"),
        ("Red%26Box%3D", "Red&Box="),
        ("%E7%BA%A2%E7%9B%92", "红盒"),
        ("%e7%ba%a2%e7%9b%92", "红盒"),
        ("%F0%9F%93%A6", "\U0001f4e6"),
    ],
)
def test_percent_encoded_values_are_decoded(raw_value: str, expected: str) -> None:
    raw = query_without("customer_name") + "&customer_name=" + raw_value
    assert accepted(raw).customer_name == expected


def test_percent_encoded_names_are_decoded() -> None:
    raw = query_without("customer_slug") + "&customer%5Fslug=redbox-logistics"
    assert as_dict(accepted(raw)) == EXAMPLE


@pytest.mark.parametrize("raw_value", ["%zz", "%", "RedBox%", "%4", "%ff", "%c3%28", "%ed%a0%80"])
def test_bad_percent_encoding_is_reported_for_that_field(raw_value: str) -> None:
    raw = query_without("customer_name") + "&customer_name=" + raw_value
    assert rejected(raw) == {"customer_name": [BAD_ENCODING]}


def test_other_fields_are_still_checked_beside_bad_encoding() -> None:
    raw = query_without("origin_country_id", "customer_name", "weight", "customer_slug")
    raw += "&origin_country_id=%ff&customer_name=%zz&weight=0"
    assert rejected(raw) == {
        "origin_country_id": [BAD_ENCODING],
        "customer_name": [BAD_ENCODING],
        "weight": [RULES["weight"]],
        "customer_slug": [MISSING],
    }


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "weight=1&weight=2",
        "customer_name=%zz&weight=%",
        "origin_country_id=xx&destination_country_id=m%FF&created_at=2018",
        query(customer_id="x", customer_slug="-", created_at="", weight="NaN"),
        query() + "&customer_id=%",
        "&&&=&%&+",
        "origin_country_id=MY&origin_country_id=%zz&origin_country_id=",
    ],
)
def test_every_error_message_is_a_documented_one(raw: str) -> None:
    errors = rejected(raw)
    assert errors
    for field, messages in errors.items():
        assert field in DESIGN_FIELDS
        assert len(messages) == 1
        assert messages[0] in {RULES[field], MISSING, REPEATED, BAD_ENCODING}


def test_trimming_removes_every_unicode_space_but_no_control_character() -> None:
    spaces = {
        char
        for char in map(chr, range(0x110000))
        if char.isspace() and unicodedata.category(char) != "Cc"
    }
    assert set(params._SPACES) == spaces


@pytest.mark.parametrize("value", ["1", "9", "20", "999", "1000"])
def test_counts_from_1_to_1000_are_accepted(value: str) -> None:
    result = validate(query(count=value))
    assert isinstance(result, TrackingRequest)
    assert result.count == value


@pytest.mark.parametrize("value", ["0", "1001", "01", "-1", "+5", "1e2", "2.0", " 5", "", "ten"])
def test_other_counts_are_rejected(value: str) -> None:
    assert validate(query(count=value)) == Invalid({"count": [RULES["count"]]})


def test_without_a_count_there_is_none() -> None:
    result = validate(query())
    assert isinstance(result, TrackingRequest)
    assert result.count is None


def test_a_count_does_not_stand_in_for_a_missing_field() -> None:
    raw = urlencode({**{k: v for k, v in EXAMPLE.items() if k != "weight"}, "count": "5"})
    assert validate(raw) == Invalid({"weight": [MISSING]})
