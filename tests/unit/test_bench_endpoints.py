"""The benchmark's endpoint keys: the S3-like endpoint shares its delay with the +delay one but is
another endpoint; uncapped endpoints stay interchangeable with their delay."""

from __future__ import annotations

from bench.common import Endpoint, slug
from bench.records import find_record


def test_an_endpoint_with_a_rate_cap_is_another_key_than_its_delay():
    plain, capped = Endpoint(20), Endpoint(20, 100)
    endpoints = {Endpoint(0): "direct", plain: "delayed", capped: "s3-like"}
    assert endpoints[0] == "direct" and endpoints[20] == "delayed" and endpoints[capped] == "s3-like"
    assert plain == 20 and 20.0 == plain and capped != 20 and 20.0 != capped and capped != plain  # noqa: SIM300 - both orders
    assert f"+{plain:g} ms" == "+20 ms"
    assert f"+{capped:g} ms" == "+20 (S3-like: 100 MB/s per connection) ms"
    assert capped.label == "S3-like (+20 ms, 100 MB/s per connection)"


def test_records_are_found_at_their_own_endpoint_only():
    records = [{"contender": "c", "step": "s", "delay_ms": Endpoint(20), "time_s": 1.0},
               {"contender": "c", "step": "s", "delay_ms": Endpoint(20, 100), "time_s": 2.0}]
    assert find_record(records, "c", "s", 20.0)["time_s"] == 1.0
    assert find_record(records, "c", "s", Endpoint(20, 100))["time_s"] == 2.0


def test_an_endpoint_names_files_without_spaces_or_slashes():
    assert [slug(e) for e in (Endpoint(0), Endpoint(20), Endpoint(20, 100), 20.0)] == \
        ["0", "20", "20-100MBps", "20"]
