{#- One etcd cluster (v3 API) over the database members, on their private address and loopback. #}
{%- from "etcd/map.jinja" import etcd, cluster with context %}
{%- set me = cluster.members[grains.id] %}
{%- if cluster.patroni.tls %}

include:
  - tls
{%- endif %}

# Written before the package is installed: Debian's package starts etcd at once, and must start
# it as a member of this cluster, not as a throw-away single node.
etcd-config:
  file.managed:
    - name: {{ etcd.env_file }}
    - source: salt://etcd/files/etcd.env.jinja
    - template: jinja
    - mode: '0644'
    - context:
        name: {{ grains.id }}
        address: {{ me.address }}
        cluster: {{ cluster | json }}
        data_dir: {{ etcd.data_root }}/{{ cluster.name }}

# etcd reports ready only once it has a quorum: the first member waits for the others.
etcd-start-timeout:
  file.managed:
    - name: /etc/systemd/system/{{ etcd.service }}.service.d/timeout.conf
    - makedirs: true
    - contents: |
        [Service]
        TimeoutStartSec={{ etcd.start_timeout }}

etcd-packages:
  pkg.installed:
    - pkgs: {{ etcd.packages | json }}
    - require:
      - file: etcd-config
      - file: etcd-start-timeout

etcd-service:
  service.running:
    - name: {{ etcd.service }}
    - enable: true
    - require:
      - pkg: etcd-packages
    - watch:
      - file: etcd-config

{#- A wait changes nothing; in test mode http.query never succeeds, so it is skipped. #}
{%- if not opts.test %}

etcd-healthy:
  http.wait_for_successful_query:
    - name: http://127.0.0.1:{{ cluster.etcd.client_port }}/health
    - match: '"health":"true"'
    - wait_for: 180
    - request_interval: 1
    - require:
      - service: etcd-service
{%- endif %}

{#- etcd's leadership off the PostgreSQL primary's host (pillar pgcluster:etcd:keep_leader_off_primary). #}
{%- if cluster.etcd.keep_leader_off_primary %}

etcd-leader-off-primary-script:
  file.managed:
    - name: {{ etcd.leader_off_primary_script }}
    - source: salt://etcd/files/etcd-leader-off-primary.py
    - mode: '0755'

etcd-leader-off-primary-unit:
  file.managed:
    - name: /etc/systemd/system/{{ etcd.leader_off_primary_service }}.service
    - contents: |
        # Managed by Salt (etcd state).
        [Unit]
        Description=Keep etcd's leader off the PostgreSQL primary's host
        After={{ etcd.service }}.service

        [Service]
        ExecStart={{ etcd.leader_off_primary_script }} \
            --etcd http://127.0.0.1:{{ cluster.etcd.client_port }} \
            --patroni {{ cluster.patroni.urls[grains.id] }} \
{%- if cluster.patroni.tls %}
            --patroni-ca {{ cluster.tls.ca_file }} \
{%- endif %}
            --interval {{ etcd.leader_off_primary_interval }}
        DynamicUser=true
        Restart=always
        RestartSec=5

        [Install]
        WantedBy=multi-user.target

etcd-leader-off-primary-service:
  service.running:
    - name: {{ etcd.leader_off_primary_service }}
    - enable: true
    - require:
      - service: etcd-service
{%- if cluster.patroni.tls %}
      - pgcluster_tls: tls-ca  # verifies Patroni's REST API
{%- endif %}
    - watch:
      - file: etcd-leader-off-primary-script
      - file: etcd-leader-off-primary-unit
{%- else %}

etcd-leader-off-primary-service:
  service.dead:
    - name: {{ etcd.leader_off_primary_service }}
    - enable: false
{%- endif %}
