{#- One etcd cluster (v3 API) over the database members, on their private address: TLS for
    peers (each showing its certificate) and clients, and users (pgcluster:etcd:tls, auth). #}
{%- from "etcd/map.jinja" import etcd, cluster with context %}
{%- set my_url = etcd.urls[grains.id] %}
include:
  - etcd.member

{#- Users and roles as pgcluster:etcd:auth wants, or authentication off, from one member.
    Authentication goes on only after Patroni has its etcd login (etcd/auth.sls, after the
    patroni state), so under a running cluster Patroni never meets authentication it cannot
    pass; it goes off here (Patroni keeps its login, which etcd then does not ask for). #}
{%- if grains.id == cluster.bootstrap_member %}

etcd-auth:
  etcd_cluster.auth_managed:
    - name: {{ cluster.name }}
    - enable: false
    - require:
      - service: etcd-service
{%- if not opts.test %}
      - http: etcd-healthy
{%- endif %}
{%- endif %}

{#- etcdctl for root on the members, with what it needs from a root-only environment file: the
    endpoints, the CA and the root user (etcd_root). #}
etcdctl-env:
  file.managed:
    - name: {{ etcd.etcdctl_env }}
    - mode: '0600'
    - user: root
    - group: root
    - makedirs: true
    - show_changes: false
    - contents: |
        # Managed by Salt (etcd state). Read by {{ etcd.etcdctl }} and etcd-leader-off-primary.
        ETCDCTL_API=3
        ETCDCTL_ENDPOINTS={{ etcd.urls.values() | join(",") }}
{%- if etcd.tls %}
        ETCDCTL_CACERT={{ cluster.tls.ca_file }}
{%- endif %}
{%- if etcd.auth %}
        ETCDCTL_USER=root:{{ pillar.pgcluster_credentials.etcd_root }}
{%- endif %}
    # The endpoints follow the member's config: not ahead of it while a TLS switch is refused.
    - require:
      - file: etcd-config

etcdctl-wrapper:
  file.managed:
    - name: {{ etcd.etcdctl }}
    - mode: '0755'
    - contents: |
        #!/bin/sh
        # Managed by Salt (etcd state): etcdctl as root with this cluster's endpoints, CA
        # and root user ({{ etcd.etcdctl_env }}). --endpoints given on the command
        # line wins. The package's own etcdctl is /usr/bin/etcdctl.
        set -a
        . {{ etcd.etcdctl_env }}
        set +a
        case " $* " in *" --endpoints"*) unset ETCDCTL_ENDPOINTS ;; esac
        exec /usr/bin/etcdctl "$@"
    - require:
      - file: etcdctl-env

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
            --etcd {{ my_url }} \
            --patroni {{ cluster.patroni.urls[grains.id] }} \
{%- if cluster.patroni.tls %}
            --patroni-ca {{ cluster.tls.ca_file }} \
{%- endif %}
            --interval {{ etcd.leader_off_primary_interval }}
        # The CA and root's etcd password (moving the leader is root's), read by systemd.
        EnvironmentFile={{ etcd.etcdctl_env }}
        DynamicUser=true
        Restart=always
        RestartSec=5

        [Install]
        WantedBy=multi-user.target
    - require:
      - file: etcd-config

etcd-leader-off-primary-service:
  service.running:
    - name: {{ etcd.leader_off_primary_service }}
    - enable: true
    - require:
      - service: etcd-service
{%- if cluster.patroni.tls or etcd.tls %}
      - pgcluster_tls: tls-ca  # verifies Patroni's REST API and etcd
{%- endif %}
    - watch:
      - file: etcd-leader-off-primary-script
      - file: etcd-leader-off-primary-unit
      - file: etcdctl-env
{%- else %}

etcd-leader-off-primary-service:
  service.dead:
    - name: {{ etcd.leader_off_primary_service }}
    - enable: false
{%- endif %}
