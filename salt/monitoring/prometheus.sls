{#- Prometheus on the Prometheus host (pgcluster:monitoring:host): its targets from the cluster
    model (pgcluster.prometheus_config), the alert rules (pgcluster.alert_rules), each checked
    by promtool before it is written; a changed config or rule is taken by a reload. #}
{%- from "monitoring/map.jinja" import cluster, monitoring, me, address with context %}
{%- from "monitoring/units.jinja" import service_off, after_network with context %}
{%- set service = monitoring.services.prometheus %}
{%- set args = ["--config.file=" ~ monitoring.config_dir ~ "/prometheus.yml",
                "--web.listen-address=" ~ address ~ ":" ~ monitoring.ports.prometheus,
                "--storage.tsdb.retention.time=" ~ monitoring.retention] %}
{%- if monitoring.enabled and me == monitoring.host %}

include:
  - monitoring.reload

monitoring-prometheus-package:
  pkg.installed:
    - pkgs: {{ monitoring.packages.prometheus | json }}
    - install_recommends: false

monitoring-prometheus-args:
  file.managed:
    - name: /etc/default/{{ service }}
    - contents: |
        # Managed by Salt (salt/monitoring).
        ARGS="{{ args | join(' ') }}"
    # Before the package, whose postinst starts the service.
    - require_in:
      - pkg: monitoring-prometheus-package

monitoring-prometheus-rules:
  file.serialize:
    - name: {{ monitoring.config_dir }}/rules/pgcluster.yml
    - dataset: {{ salt['pgcluster.alert_rules']() | json }}
    - serializer: yaml
    - makedirs: true
    - check_cmd: promtool check rules
    - require:
      - pkg: monitoring-prometheus-package

monitoring-prometheus-config:
  file.serialize:
    - name: {{ monitoring.config_dir }}/prometheus.yml
    - dataset: {{ salt['pgcluster.prometheus_config']() | json }}
    - serializer: yaml
    - check_cmd: promtool check config
    - require:
      - pkg: monitoring-prometheus-package

{{ after_network("monitoring-prometheus-dropin", service, "monitoring-prometheus-package") }}

monitoring-prometheus-service:
  service.running:
    - name: {{ service }}
    - enable: true
    - require:
      - file: monitoring-prometheus-config
      - file: monitoring-prometheus-rules
    - watch:
      - file: monitoring-prometheus-args
      - file: monitoring-prometheus-dropin

monitoring-prometheus-reload:
  cmd.run:
    - name: /usr/local/lib/pgcluster/reload-when-ready {{ service }} {{ monitoring.url }}/-/ready
    - onchanges:
      - file: monitoring-prometheus-config
      - file: monitoring-prometheus-rules
    - require:
      - service: monitoring-prometheus-service
      - file: monitoring-reload-when-ready
{%- else %}
{{ service_off("monitoring-prometheus-service", service) }}
{%- endif %}
