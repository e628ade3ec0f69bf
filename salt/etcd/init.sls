{#- One etcd cluster (v3 API) over the database members, on their private address: TLS for
    peers (each showing its certificate) and clients, and users (pgcluster:etcd:tls, auth). #}
{%- from "etcd/map.jinja" import etcd, cluster with context %}
{%- set me = cluster.members[grains.id] %}
{%- set my_url = etcd.urls[grains.id] %}
{%- if cluster.patroni.tls or etcd.tls %}

include:
  - tls
{%- endif %}
{%- if etcd.tls %}

# The package's user, made before the package (Debian's postinst keeps a user it finds), so
# that etcd's copies of the certificates are its own when the package first starts etcd.
etcd-user:
  group.present:
    - name: {{ etcd.group }}
    - system: true
  user.present:
    - name: {{ etcd.user }}
    - gid: {{ etcd.group }}
    - system: true
    - home: {{ etcd.data_root }}
    - createhome: false
    - shell: /usr/sbin/nologin
    - require:
      - group: etcd-user

# The home the postinst's adduser would have made: Debian's postinst only mkdirs it (as root)
# when the user is already there.
etcd-data-root:
  file.directory:
    - name: {{ etcd.data_root }}
    - user: {{ etcd.user }}
    - group: {{ etcd.group }}
    - mode: '0700'
    - require:
      - user: etcd-user

{#- The CA's certificate, this host's certificate and key (salt/tls), owned by etcd. etcd reads
    them at every handshake: a renewed certificate needs no restart. #}
etcd-tls-copies:
  pgcluster_tls.copies_managed:
    - name: {{ etcd.tls_dir }}
    - source: {{ cluster.tls.dir }}
    - user: {{ etcd.user }}
    - group: {{ etcd.group }}
    - require:
      - user: etcd-user
      - pgcluster_tls: tls-certificate
{%- endif %}

{#- etcd keeps its members' peer URLs in its data: switching TLS under a running cluster means
    moving every peer in turn, which is not automated yet. A config that would switch it is
    refused before anything changes. #}
{%- set member_dir = etcd.data_root ~ "/" ~ cluster.name ~ "/member" %}
{%- set running_scheme = "http" if etcd.tls else "https" %}
{%- set switching = salt["file.directory_exists"](member_dir) and salt["file.file_exists"](etcd.env_file)
      and salt["file.search"](etcd.env_file, 'ETCD_LISTEN_PEER_URLS="' ~ running_scheme ~ '://') %}
{%- if switching %}

etcd-tls-unchanged:
  test.fail_without_changes:
    - name: >-
        pillar pgcluster:etcd:tls: {{ etcd.tls | lower }} would switch this running etcd
        cluster's peers from {{ running_scheme }}, which is not automated yet; set it to
        {{ (not etcd.tls) | lower }} for this cluster, or deploy it anew
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
{%- if etcd.tls or switching %}
    - require:
{%-   if etcd.tls %}
      - pgcluster_tls: etcd-tls-copies
      - file: etcd-data-root
{%-   endif %}
{%-   if switching %}
      - test: etcd-tls-unchanged
{%-   endif %}
{%- endif %}

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
    - name: {{ my_url }}/health
    - match: '"health":"true"'
    - wait_for: 180
    - request_interval: 1
{%- if etcd.tls %}
    - ca_bundle: {{ cluster.tls.ca_file }}
{%- endif %}
    - require:
      - service: etcd-service
{%- endif %}

{#- Users and roles as pgcluster:etcd:auth wants, or authentication off, from one member.
    Authentication goes on only after Patroni has its etcd login (etcd/auth.sls, after the
    patroni state), and off here, before Patroni stops logging in: under a running cluster
    Patroni never meets authentication it cannot pass. #}
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
