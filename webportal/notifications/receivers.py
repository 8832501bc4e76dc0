"""The notifications' side of the report lifecycle (webportal.reports.signals): a changed
report goes to the subscribed webhooks and the lab's LIS, a critical one to the webhooks.
Connected once, when the app is ready (NotificationsConfig.ready)."""

from __future__ import annotations

from typing import Any

from webportal.notifications import lis, webhooks
from webportal.reports import signals
from webportal.reports.models import Report


def _report_changed(sender: Any, *, report: Report, **_: Any) -> None:
    webhooks.report_changed_on_commit(report_id=report.pk)
    lis.report_changed(report=report)


def _report_critical(sender: Any, *, report: Report, **_: Any) -> None:
    webhooks.report_critical_on_commit(report_id=report.pk)


def connect() -> None:
    signals.report_changed.connect(_report_changed, dispatch_uid="notifications.report_changed")
    signals.report_critical.connect(_report_critical, dispatch_uid="notifications.report_critical")
