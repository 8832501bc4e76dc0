"""Every outbound message and its outbox: webhooks, the lab's LIS (HL7 v2 over MLLP), the one
guarded outbound client. Above the report lifecycle, which tells them through
webportal.reports.signals; below the worker's side, which calls them."""
