"""Counters read off a gateway's /metrics around a run: what the shadow copies and the prediction log did."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from loadtests.modes import MODEL, BenchError
from loadtests.servers import SHADOW_SETTLE_S, Gateway

SHADOW_COUNTERS = ("compared", "agreed", "disagreed", "errored", "dropped", "latency_count", "latency_sum_s")


def scrape_shadow(gw: Gateway, settle_s: float = SHADOW_SETTLE_S) -> dict[str, float]:
    """The gateway's shadow counters for the model, summed over shadow versions, from its /metrics.

    compared = agreed + disagreed (copies the shadow answered and that were checked against the primary);
    errored (the copy failed); dropped (shed before it was sent: the shadow already had a full batch waiting or too
    many copies were in flight); latency_count / latency_sum_s (the shadow's own inference time).
    """
    from prometheus_client.parser import text_string_to_metric_families

    time.sleep(settle_s)
    try:
        with urllib.request.urlopen(f"{gw.base_url}/metrics", timeout=5.0) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        raise BenchError(f"cannot scrape {gw.base_url}/metrics: {exc}") from exc
    out = dict.fromkeys(SHADOW_COUNTERS, 0.0)
    outcomes = {"agreed": "agreed", "disagreed": "disagreed", "error": "errored"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != MODEL:
                continue
            if sample.name == "sluice_shadow_requests_total" and sample.labels.get("outcome") in outcomes:
                out[outcomes[sample.labels["outcome"]]] += sample.value
            elif sample.name == "sluice_shadow_dropped_total":
                out["dropped"] += sample.value
            elif sample.name == "sluice_shadow_latency_seconds_count":
                out["latency_count"] += sample.value
            elif sample.name == "sluice_shadow_latency_seconds_sum":
                out["latency_sum_s"] += sample.value
    out["compared"] = out["agreed"] + out["disagreed"]
    return out


LOG_OUTCOMES = ("written", "dropped", "failed", "sampled_out")


def scrape_prediction_log(gw: Gateway) -> dict[str, float]:
    """The gateway's prediction log counters since start-up (records by fate, and the queue depth now)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{gw.base_url}/metrics", timeout=5.0) as resp:
            text = resp.read().decode("utf-8", errors="replace")
    except (OSError, urllib.error.URLError) as exc:
        raise BenchError(f"cannot scrape {gw.base_url}/metrics: {exc}") from exc
    out = dict.fromkeys((*LOG_OUTCOMES, "queue_depth"), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluice_prediction_log_records_total" and sample.labels.get("outcome") in out:
                out[sample.labels["outcome"]] += sample.value
            elif sample.name == "sluice_prediction_log_queue_depth":
                out["queue_depth"] = sample.value
    return out


def counter_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}
