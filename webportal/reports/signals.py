"""What the report lifecycle announces, for whoever must tell the outside world (webhooks, the
lab's LIS: webportal.notifications.receivers). Reports never import the notifications: they
send these, the notifications listen; a receiver runs in the sender's transaction, as the
direct calls did.

- report_changed(report): a report was signed or amended (its results change outside).
- report_critical(report): a report is critical (new, recounted to critical, signed or amended).
"""

from __future__ import annotations

from django.dispatch import Signal

report_changed = Signal()
report_critical = Signal()
