{#- Alertmanager on the Prometheus host, when pgcluster:monitoring:receivers names a webhook or
    an e-mail address: every alert to them, and again when it is resolved. Alone (no cluster
    of Alertmanagers: its gossip port stays closed). #}
{%- from "monitoring/map.jinja" import cluster, monitoring, me, address with context %}
{%- from "monitoring/units.jinja" import service_off, after_network with context %}
{%- set service = monitoring.services.alertmanager %}
{%- set args = ["--config.file=" ~ monitoring.config_dir ~ "/alertmanager.yml",
                "--web.listen-address=" ~ address ~ ":" ~ monitoring.ports.alertmanager,
                "--cluster.listen-address="] %}
{%- if monitoring.enabled and me == monitoring.host and monitoring.alertmanager %}

include:
  - monitoring.reload

monitoring-alertmanager-package:
  pkg.installed:
    - pkgs: {{ monitoring.packages.alertmanager | json }}
    - install_recommends: false

monitoring-alertmanager-args:
  file.managed:
    - name: /etc/default/{{ service }}
    - contents: |
        # Managed by Salt (salt/monitoring).
        ARGS="{{ args | join(' ') }}"
    # Before the package, whose postinst starts the service.
    - require_in:
      - pkg: monitoring-alertmanager-package

# The SMTP password, when there is one, is in it: readable by Alertmanager's user only.
monitoring-alertmanager-config:
  file.managed:
    - name: {{ monitoring.config_dir }}/alertmanager.yml
    - source: salt://monitoring/files/alertmanager.yml.jinja
    - template: jinja
    - user: root
    - group: prometheus
    - mode: '0640'
    - show_changes: false
    - check_cmd: amtool check-config
    - require:
      - pkg: monitoring-alertmanager-package

{{ after_network("monitoring-alertmanager-dropin", service, "monitoring-alertmanager-package") }}

monitoring-alertmanager-service:
  service.running:
    - name: {{ service }}
    - enable: true
    - require:
      - file: monitoring-alertmanager-config
    - watch:
      - file: monitoring-alertmanager-args
      - file: monitoring-alertmanager-dropin

monitoring-alertmanager-reload:
  cmd.run:
    - name: /usr/local/lib/pgcluster/reload-when-ready {{ service }} http://{{ address }}:{{ monitoring.ports.alertmanager }}/-/ready
    - onchanges:
      - file: monitoring-alertmanager-config
    - require:
      - service: monitoring-alertmanager-service
      - file: monitoring-reload-when-ready
{%- else %}
{{ service_off("monitoring-alertmanager-service", service) }}
{%- endif %}
