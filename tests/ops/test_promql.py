"""The PromQL reader that the Prometheus checks rely on finds what an expression reads."""

from tests.ops.promql import reads


def test_selectors_name_their_metric_and_matched_labels() -> None:
    found = reads(
        'sum by (job, instance) (rate(tracking_http_requests_total{route="/x", status="503"}[5m]))'
        ' / sum by (job, instance) (rate(tracking_http_requests_total{route="/x"}[5m])) > 0.01'
    )
    assert found.selectors == {"tracking_http_requests_total": {"route", "status"}}
    assert found.grouping == {"job", "instance"}


def test_bare_names_count_and_functions_keywords_durations_and_strings_do_not() -> None:
    found = reads(
        "tracking_allocator_store_up == 0 or time() - max(start_seconds offset 5m)"
        ' and on (instance) predict_linear(left[6h], 30 * 86400) < 7.2e15 unless up{job="a b"}'
    )
    assert set(found.selectors) == {"tracking_allocator_store_up", "start_seconds", "left", "up"}
    assert found.selectors["up"] == {"job"}
    assert found.grouping == {"instance"}


def test_grouping_after_the_aggregation_counts_too() -> None:
    found = reads("sum(rate(x_bucket[1m])) by (le)")
    assert found.selectors == {"x_bucket": set()}
    assert found.grouping == {"le"}
