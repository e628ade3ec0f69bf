{#- A reload that waits for the service to be ready (prometheus.sls, alertmanager.sls). #}
monitoring-reload-when-ready:
  file.managed:
    - name: /usr/local/lib/pgcluster/reload-when-ready
    - source: salt://monitoring/files/reload-when-ready.sh
    - makedirs: true
    - mode: '0755'
