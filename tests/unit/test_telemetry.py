"""meshd/telemetry.py: what a daemon counts, with label values that stay few."""

from __future__ import annotations

from meshd.telemetry import Telemetry, routing_kind


def test_failures_before_a_token_add_no_label_per_model_name() -> None:
    telemetry = Telemetry()
    for i in range(50):
        telemetry.track(f"made-up-{i}", "http").failed("ModelNotFound")
    text = telemetry.exposition().decode()
    assert "made-up" not in text
    assert 'meshd:requests_total{door="http",model="",status="ModelNotFound"} 50.0' in text


def test_routing_reasons_become_four_labels() -> None:
    assert routing_kind("warm on this peer, least expected wait 0 ms", local=True) == "warm_local"
    assert routing_kind("forwarded here: served where it landed", local=True) == "warm_local"
    assert routing_kind("prefix warm on peer-x, ~90 of ~100 tokens cached", False) == "warm_peer"
    assert routing_kind("warm on peer-x, least expected wait 3 ms", local=False) == "warm_peer"
    assert routing_kind("no peer had it warm; peer-x has the most free memory", False) == (
        "cold_peer"
    )
