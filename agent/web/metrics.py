"""Prometheus metrics: counts read from the database at scrape time, timings in-process.

Counts come from the database so that every process sharing it (several
agents on one PostgreSQL database, a CLI, a restarted agent) reports the same
numbers, and so the C-STORE path carries no instrumentation at all. Only what
the database cannot know is kept in this process: inference time per batch
and whether the model is loaded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from agent.logs import get_logger
from agent.pipeline.workers import INFERENCE_BUCKETS
from storage.backfill_queue import campaign_progress
from storage.monitoring import latest_checks
from storage.referrals import referral_counts
from storage.results import metric_counts

log = get_logger("agent.web")

PREFIX = "hyperct"


class DatabaseCollector(Collector):
    """Counters and gauges derived from the results database on each scrape."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_database_up", "1 if the database answered this scrape")
        try:
            with self.sessions() as session:
                c = metric_counts(session)
                referrals = referral_counts(session)
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable", error=type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _counter("instances_received", "Instances stored (rows in instances)", c.instances)
        for outcome in ("accepted", "rejected"):
            yield _counter(
                f"associations_{outcome}",
                f"Associations {outcome} (audit trail)",
                c.associations.get(outcome, 0),
            )
        yield _counter("series_screened", "Series screened at least once", c.screened)
        yield _counter("echo_referrals", "Screened series flagged for echocardiography",
                       c.echo_referrals)  # fmt: skip
        skipped = CounterMetricFamily(
            f"{PREFIX}_series_skipped",
            "Series not screened, by reason (first failed eligibility check, or not_chosen)",
            labels=["reason"],
        )
        for reason, n in sorted(c.skipped.items()):
            skipped.add_metric([reason], n)
        yield skipped
        yield _counter("deliveries_failed", "Failed report delivery attempts", c.delivery_failures)
        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Series jobs by state", labels=["state"])
        for state, n in c.jobs.items():
            jobs.add_metric([state], n)
        yield jobs
        reports = GaugeMetricFamily(f"{PREFIX}_reports", "Report deliveries by state",
                                    labels=["state"])  # fmt: skip
        for state, n in c.reports.items():
            reports.add_metric([state], n)
        yield reports
        depth = GaugeMetricFamily(
            f"{PREFIX}_queue_depth",
            "Work waiting or in progress: screening (queued, running, failed awaiting retry) "
            "and delivery (pending, sending, failed awaiting retry)",
            labels=["queue"],
        )
        depth.add_metric(["screening"], c.jobs["queued"] + c.jobs["running"] + c.jobs["failed"])
        depth.add_metric(
            ["delivery"], c.reports["pending"] + c.reports["sending"] + c.reports["failed"]
        )
        yield depth
        by_state = GaugeMetricFamily(
            f"{PREFIX}_referrals",
            "Echo referrals (one per patient episode) by state",
            labels=["state"],
        )
        for state, n in referrals.items():
            by_state.add_metric([state], n)
        yield by_state


class MonitorCollector(Collector):
    """The newest monitoring check of each score and input (``monitor_checks``).

    ``hyperct_drift_psi`` / ``hyperct_drift_ks``: the statistic (absent while too few
    samples); ``hyperct_drift_alert``: 1 when above its threshold; ``hyperct_drift_available``:
    0 when the model card has no reference distributions; ``hyperct_live_auc``: each
    task's live AUC against matched echo outcomes (absent while too few are matched).
    """

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                checks = latest_checks(session)
        except SQLAlchemyError:
            return  # DatabaseCollector reports the database down
        labels = ["kind", "name"]
        values = {
            s: GaugeMetricFamily(f"{PREFIX}_drift_{s}", f"Newest drift {s.upper()} of a score "
                                 "or input against the model card's reference", labels=labels)
            for s in ("psi", "ks")
        }  # fmt: skip
        alert = GaugeMetricFamily(f"{PREFIX}_drift_alert",
                                  "1 when the newest drift statistic is above its threshold",
                                  labels=labels)  # fmt: skip
        samples = GaugeMetricFamily(
            f"{PREFIX}_drift_samples", "Live values in the newest check's window", labels=labels
        )
        live_auc = GaugeMetricFamily(f"{PREFIX}_live_auc",
                                     "Newest live ROC AUC of a task against matched echo outcomes",
                                     labels=["task"])  # fmt: skip
        available = GaugeMetricFamily(f"{PREFIX}_drift_available",
                                      "0 when the model card has no drift reference")  # fmt: skip
        for c in checks:
            if c.kind == "drift":  # the card has no reference: nothing was compared
                continue
            if c.kind == "performance":
                if c.value is not None:
                    live_auc.add_metric([c.name], c.value)
                continue
            if c.statistic in values and c.value is not None:
                values[c.statistic].add_metric([c.kind, c.name], c.value)
            alert.add_metric([c.kind, c.name], 1 if c.alert else 0)
            samples.add_metric([c.kind, c.name], c.n)
        if checks:
            available.add_metric([], 0 if any(c.kind == "drift" for c in checks) else 1)
            yield available
        yield from values.values()
        yield alert
        yield samples
        yield live_auc


class BackfillCollector(Collector):
    """Archive backfill per campaign: series by state, retrieve rate and ETA."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        try:
            with self.sessions() as session:
                campaigns = campaign_progress(session)
        except SQLAlchemyError:
            return  # the database collector already says it is down
        series = GaugeMetricFamily(
            f"{PREFIX}_backfill_series", "Backfill series by campaign and state",
            labels=["campaign", "state"],
        )  # fmt: skip
        rate = GaugeMetricFamily(
            f"{PREFIX}_backfill_rate_per_hour", "Series retrieved in the last hour",
            labels=["campaign"],
        )  # fmt: skip
        eta = GaugeMetricFamily(
            f"{PREFIX}_backfill_eta_seconds", "Time left at the current rate",
            labels=["campaign"],
        )  # fmt: skip
        for c in campaigns:
            for state, n in c.series.items():
                series.add_metric([c.name, state], n)
            rate.add_metric([c.name], c.rate_per_hour or 0.0)
            if c.eta_seconds is not None:
                eta.add_metric([c.name], c.eta_seconds)
        yield series
        yield rate
        yield eta


def _counter(name: str, doc: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class ModelCollector(Collector):
    """Whether this process has its model (1 loaded, 0 loading or failed)."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(f"{PREFIX}_model_loaded", "1 once the model is loaded")
        g.add_metric([], 1 if self.holder.loaded else 0)
        yield g


class WorkersCollector(Collector):
    """The model and inference times as the screen workers last recorded them (a node).

    Inference counts add up over every worker file, stopped ones included, so
    the totals only grow while the files are kept.
    """

    def __init__(self, board: Any) -> None:
        self.board = board

    def collect(self) -> Iterator[Metric]:
        records = self.board.records()
        live = {r.worker for r in self.board.live()}
        g = GaugeMetricFamily(f"{PREFIX}_model_loaded", "1 once the model is loaded")
        loaded = any(r.worker in live and r.model.get("state") == "loaded" for r in records)
        g.add_metric([], 1 if loaded else 0)
        yield g
        counts = [0] * len(INFERENCE_BUCKETS)
        total, seconds = 0, 0.0
        for r in records:
            buckets = r.inference.get("buckets") or []
            if len(buckets) != len(counts):
                continue
            counts = [a + int(b) for a, b in zip(counts, buckets, strict=True)]
            total += int(r.inference.get("count", 0))
            seconds += float(r.inference.get("sum", 0.0))
        yield HistogramMetricFamily(
            f"{PREFIX}_inference_seconds",
            "Wall time of one model call on a batch of series",
            buckets=[(str(b), n) for b, n in zip(INFERENCE_BUCKETS, counts, strict=True)]
            + [("+Inf", total)],
            sum_value=seconds,
        )


def inference_histogram() -> Histogram:
    return Histogram(
        f"{PREFIX}_inference_seconds",
        "Wall time of one model call on a batch of series",
        buckets=INFERENCE_BUCKETS,
        registry=None,
    )


class _TimedPredictor:
    """The predictor, with ``predict`` timed; everything else passes through."""

    def __init__(self, predictor: Any, histogram: Histogram) -> None:
        self._predictor = predictor
        self._histogram = histogram

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        out = self._predictor.predict(*args, **kwargs)
        self._histogram.observe(time.perf_counter() - started)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


def time_inference(holder: Any, histogram: Histogram) -> None:
    """Time every batch ``holder``'s predictor runs, from outside the pipeline.

    The screener fetches the predictor with ``holder.get()`` before each batch;
    handing it a timed wrapper measures inference without touching the
    pipeline's code (two clock reads per batch).
    """
    original = holder.get

    def get(timeout: float | None = None) -> Any:
        predictor = original(timeout)
        return None if predictor is None else _TimedPredictor(predictor, histogram)

    holder.get = get


def build_registry(
    sessions: sessionmaker[Session],
    holder: Any | None,
    histogram: Histogram | None,
    workers: Any | None = None,
) -> CollectorRegistry:
    """A registry of its own (not the global one): several dashboards in one process agree."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DatabaseCollector(sessions))
    registry.register(MonitorCollector(sessions))
    registry.register(BackfillCollector(sessions))
    if workers is not None:
        registry.register(WorkersCollector(workers))
    elif holder is not None:
        registry.register(ModelCollector(holder))
    if histogram is not None:
        registry.register(histogram)
    return registry
