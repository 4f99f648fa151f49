"""UPU S10 service indicators and the s10_* settings (config/indicators.py, config/settings.py)."""

import os

import pytest

from config import settings
from config.indicators import (
    DEFAULT_S10_INDICATORS,
    allowed_indicators,
    classify,
    expand,
)
from config.settings import ConfigError
from service.s10 import allows, refusal


def load(*argv: str, env: dict[str, str] | None = None) -> settings.Config:
    return settings.load(["--config", os.devnull, *argv], env=env or {})


@pytest.mark.parametrize(
    ("indicator", "kind"),
    [
        *[(f"{first}A", "international") for first in "RECLVUHM"],
        ("RZ", "international"),
        ("QA", "international"),
        ("QM", "international"),
        ("QN", "unknown"),
        ("AU", "unknown"),
        *[(indicator, "domestic") for indicator in ("AV", "AZ", "BA", "DZ", "GA", "GD", "NP")],
        ("PZ", "domestic"),
        ("ZZ", "domestic"),
        ("GB", "unknown"),
        *[(f"{first}X", "reserved") for first in "JKSTW"],
        ("FA", "unknown"),
        ("XX", "unknown"),
        ("R1", "unknown"),
        ("RRR", "unknown"),
        ("rr", "unknown"),
    ],
)
def test_each_indicator_is_classified_as_upu_s10_says(indicator: str, kind: str) -> None:
    assert classify(indicator) == kind


def test_every_two_letters_have_exactly_one_kind() -> None:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    kinds = {a + b: classify(a + b) for a in letters for b in letters}

    assert sum(kind == "international" for kind in kinds.values()) == 8 * 26 + 13
    assert sum(kind == "domestic" for kind in kinds.values()) == 5 + 5 * 26 + 2
    assert sum(kind == "reserved" for kind in kinds.values()) == 5 * 26


@pytest.mark.parametrize(
    ("entry", "indicators"),
    [
        ("RR", ["RR"]),
        ("rr", ["RR"]),
        (" R* ", [f"R{c}" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]),
        ("QA-QC", ["QA", "QB", "QC"]),
        ("AV-AZ", ["AV", "AW", "AX", "AY", "AZ"]),
    ],
)
def test_an_entry_names_an_indicator_a_first_letter_or_a_range(
    entry: str, indicators: list[str]
) -> None:
    assert expand(entry) == indicators


@pytest.mark.parametrize("entry", ["R", "RRR", "R1", "*", "**", "QA-RB", "QA-", "QM-QA", "RR,EE"])
def test_a_malformed_entry_is_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=r"not an indicator|ends before it starts"):
        expand(entry)


def test_by_default_every_international_indicator_and_only_those_are_issued() -> None:
    allowed = allowed_indicators(load().s10_indicators)

    assert load().s10_indicators == DEFAULT_S10_INDICATORS
    assert {classify(indicator) for indicator in allowed} == {"international"}
    assert len(allowed) == 8 * 26 + 13
    assert {"RR", "EE", "CP", "LX", "VV", "UA", "HA", "MA", "QA", "QM"} <= allowed
    assert not {"QN", "AV", "BA", "GA", "NP", "ZZ"} & allowed


def test_domestic_indicators_are_issued_when_listed() -> None:
    config = load("--s10-indicators", "RR, AV-AZ, GA")

    assert config.s10_indicators == ("RR", "AV-AZ", "GA")
    assert allowed_indicators(config.s10_indicators) == {"RR", "AV", "AW", "AX", "AY", "AZ", "GA"}


def test_indicators_from_env_are_comma_separated_and_from_file_a_list(tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('s10_indicators = ["EE", "C*"]\n')

    assert load(env={"TRACKING_S10_INDICATORS": "RR,EE"}).s10_indicators == ("RR", "EE")
    from_file = settings.load(["--config", str(toml)], env={})
    assert from_file.s10_indicators == ("EE", "C*")


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        ("RR,SA", r"s10_indicators: 'SA' lists SA: .* reserved"),
        ("J*", r"s10_indicators: 'J\*' lists JA: .* reserved"),
        ("RR,Q*", r"s10_indicators: 'Q\*' lists QN, which is not a UPU S10 service indicator"),
        ("XX", r"'XX' lists XX, which is not a UPU S10 service indicator"),
        ("R1", r"s10_indicators: 'R1' is not an indicator"),
    ],
)
def test_a_configuration_listing_a_reserved_or_unknown_indicator_does_not_start(
    listed: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load("--s10-indicators", listed)


def test_s10_order_is_permuted_by_default_or_sequential() -> None:
    assert load().s10_order == "permuted"
    assert load(env={"TRACKING_S10_ORDER": "sequential"}).s10_order == "sequential"
    with pytest.raises(ConfigError, match="s10_order"):
        load("--s10-order", "random")


def test_the_issuing_route_is_told_why_an_indicator_is_refused() -> None:
    listed = ("RR", "EE")
    allowed = allowed_indicators(listed)

    assert allows(allowed, "RR")
    assert not allows(allowed, "CP")
    assert refusal("CP", listed) == (
        "CP (for international use) is not among the indicators this operator issues "
        "(s10_indicators: RR, EE)"
    )
    assert refusal("AV", DEFAULT_S10_INDICATORS) == (
        "AV (for domestic or bilateral use) is not among the indicators this operator issues "
        "(s10_indicators: R*, E*, C*, L*, V*, U*, H*, M*, QA-QM)"
    )
    assert "reserved by UPU S10" in refusal("SA", listed)
    assert refusal("R1", listed) == "'R1' is not a UPU S10 service indicator"
    assert "(s10_indicators: none)" in refusal("RR", ())
