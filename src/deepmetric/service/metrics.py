"""Prometheus metrics of one service instance: requests by route and status, latency per route, and the
gallery's size and index rebuilds read when scraped. Each app has its own registry, so two apps in one
process (tests, a process serving two galleries) never count into each other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The media type of ``ServiceMetrics.render``'s output.
METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST


class _GalleryCollector(Collector):
    """Reads the gallery at scrape time: nothing to keep in step with writes made elsewhere (the CLI, a
    second process on the same folder)."""

    def __init__(self, gallery: Any) -> None:
        self.gallery = gallery

    def collect(self) -> Iterator[Metric]:
        index = self.gallery.index.info()
        yield GaugeMetricFamily("deepmetric_gallery_identities", "Identities enrolled in the gallery.",
                                value=len(self.gallery))
        yield GaugeMetricFamily("deepmetric_gallery_templates", "Templates (enrolled embeddings) in the gallery.",
                                value=self.gallery.store.num_templates())
        yield GaugeMetricFamily("deepmetric_index_size", "Identities in the search index.", value=index["size"])
        yield GaugeMetricFamily("deepmetric_index_stale", "1 while the index lags the gallery and awaits a rebuild.",
                                value=int(bool(index["stale"])))
        yield CounterMetricFamily("deepmetric_index_rebuilds", "Index rebuilds since the gallery was opened.",
                                  value=index["rebuilds"])


class ServiceMetrics:
    """Request counters and latency histograms of one app, plus the gallery gauges; ``render`` gives the
    Prometheus text format."""

    def __init__(self, gallery: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("deepmetric_requests", "HTTP requests by method, route template and status.",
                                ("method", "route", "status"), registry=self.registry)
        self.latency = Histogram("deepmetric_request_seconds", "Time to answer a request, by method and route.",
                                 ("method", "route"), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_GalleryCollector(gallery))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
