{#- The web app on the web host: gunicorn behind nginx, on its data path (pgcluster:webapp:
    data_path: HAProxy's ports, or libpq straight to the members; pgcluster.webapp_config). #}
{%- from "webapp/map.jinja" import webapp, cluster with context %}
{%- set tls = cluster.backend_tls or cluster.postgresql.tls or cluster.patroni.tls %}

include:
  - webapp.install
{%- if tls %}
  - tls
{%- endif %}

webapp-code:
  file.managed:
    - name: {{ webapp.app_dir }}/db_app.py
    - source: salt://webapp/files/db_app.py
    - makedirs: true
    - mode: '0644'

# Its hooks for Prometheus's multiprocess mode (the unit names it with --config).
webapp-gunicorn-config:
  file.managed:
    - name: {{ webapp.app_dir }}/gunicorn.conf.py
    - source: salt://webapp/files/gunicorn.conf.py
    - makedirs: true
    - mode: '0644'

# The database password: readable by the app's user only, never shown.
# The page's script and uPlot (vendored from npm, with its licence): no CDN.
webapp-static:
  file.recurse:
    - name: {{ webapp.app_dir }}/static
    - source: salt://webapp/files/static
    - file_mode: '0644'
    - dir_mode: '0755'
    - clean: true

webapp-config:
  file.managed:
    - name: {{ webapp.config_file }}
    - source: salt://webapp/files/config.json.jinja
    - template: jinja
    - makedirs: true
    - user: root
    - group: {{ webapp.group }}
    - mode: '0640'
    - show_changes: false
    - require:
      - pkg: webapp-packages
{%- if tls %}
      - pgcluster_tls: tls-ca
{%- endif %}

webapp-unit:
  file.managed:
    - name: /etc/systemd/system/{{ webapp.service }}.service
    - source: salt://webapp/files/webapp.service.jinja
    - template: jinja
    - context:
        webapp: {{ webapp | json }}

webapp-service:
  service.running:
    - name: {{ webapp.service }}
    - enable: true
    - require:
      - pkg: webapp-packages
    - watch:
      - file: webapp-code
      - file: webapp-static
      - file: webapp-gunicorn-config
      - file: webapp-config
      - file: webapp-unit

webapp-nginx-default-site-off:
  file.absent:
    - name: /etc/nginx/sites-enabled/default
    - require:
      - pkg: webapp-packages

webapp-nginx-site:
  file.managed:
    - name: {{ webapp.nginx_site }}
    - source: salt://webapp/files/nginx.conf.jinja
    - template: jinja
    - context:
        webapp: {{ webapp | json }}
        # Who may read /metrics besides loopback: the Prometheus host, when there is one.
        metrics_allow: {{ ([cluster.monitoring.address] if cluster.monitoring.enabled else []) | json }}
    - require:
      - pkg: webapp-packages

# nginx -t checks the whole configuration with the new site before nginx reloads it.
webapp-nginx-valid:
  cmd.run:
    - name: nginx -t -q
    - onchanges:
      - file: webapp-nginx-site
      - file: webapp-nginx-default-site-off

webapp-nginx:
  service.running:
    - name: nginx
    - enable: true
    - reload: true
    - require:
      - cmd: webapp-nginx-valid
    - watch:
      - file: webapp-nginx-site
      - file: webapp-nginx-default-site-off
