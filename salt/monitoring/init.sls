{#- Monitoring (pgcluster:monitoring): every host's exporters, and on the Prometheus host
    Prometheus with the alert rules and, when a receiver is set, Alertmanager. Each state
    stops what this host no longer runs (monitoring off, or the Prometheus host moved). #}
include:
  - monitoring.exporters
  - monitoring.prometheus
  - monitoring.alertmanager
