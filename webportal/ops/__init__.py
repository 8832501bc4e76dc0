"""Operating the installation: readiness, worker heartbeats, metrics and counters
(monitoring). Reads every app's rows, so it sits above them; /healthz, /readyz and /metrics
are its pages (webportal.interfaces.api.ops)."""
