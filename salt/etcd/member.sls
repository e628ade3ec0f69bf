{#- This member's etcd: its config, package, service, and a wait for its health. The etcd state
    includes it; the TLS switch (the runner pgcluster_etcd.tls_switch) applies it alone, one
    member at a time, with pillar etcd_tls_stage: the stage to restart this member's etcd as
    (tls, plain, or bridge: plain listeners with the certificates that reach peers already
    on TLS). Without it, the stage is what pgcluster:etcd:tls says, and a running etcd that
    would change stage is refused. #}
{%- from "etcd/map.jinja" import etcd, cluster with context %}
{%- set me = cluster.members[grains.id] %}
{%- set switch_stage = salt['pillar.get']('etcd_tls_stage') %}
{%- set stage = salt['etcd_cluster.tls_stage'](fresh=False) %}
{%- if switch_stage and switch_stage not in ('tls', 'plain', 'bridge') %}
{{ raise('pillar etcd_tls_stage: ' ~ switch_stage ~ ' is none of tls, plain, bridge') }}
{%- endif %}
{%- set target = switch_stage or stage.wanted %}
{%- set certificates = target in ('tls', 'bridge') %}
{%- set scheme = 'https' if target == 'tls' else 'http' %}
{%- set my_url = scheme ~ '://' ~ me.address ~ ':' ~ etcd.client_port %}
{%- if cluster.patroni.tls or certificates %}

include:
  - tls
{%- endif %}
{%- if certificates %}

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

{#- etcd keeps its members' peer URLs in its data: a running cluster changes TLS member by
    member, which bin/deploy (orch.cluster) does before its members-base step. A plain
    state.apply that would change it is refused before anything changes. #}
{%- set refused = stage.pending and not switch_stage %}
{%- if refused %}

etcd-tls-unchanged:
  test.fail_without_changes:
    - name: etcd's TLS unchanged
    - comment: >-
        pillar pgcluster:etcd:tls: {{ etcd.tls | lower }} would switch this running etcd from
        {{ stage.running }} to {{ stage.wanted }}, member by member: bin/deploy (the
        orchestration orch.cluster) does that under the running cluster
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
        data_dir: {{ etcd.data_dir }}
        stage: {{ target }}
{%- if certificates or refused %}
    - require:
{%-   if certificates %}
      - pgcluster_tls: etcd-tls-copies
      - file: etcd-data-root
{%-   endif %}
{%-   if refused %}
      - test: etcd-tls-unchanged
{%-   endif %}
{%- endif %}

{#- How this member first joins: with the others of a new cluster, as the pillar lists them;
    or, with pillar etcd_join (the runner pgcluster_members.join, after etcd's member add), as
    a member added to a running cluster. Written only while there is no data: etcd reads it
    only then, and a member added later must not restart the running ones. #}
{%- set join = salt['pillar.get']('etcd_join') %}

etcd-bootstrap-config:
  file.managed:
    - name: {{ etcd.bootstrap_file }}
    - source: salt://etcd/files/etcd-bootstrap.env.jinja
    - template: jinja
    - mode: '0644'
    - context:
        cluster_name: {{ cluster.name }}
{%- if join %}
        initial_cluster: {{ join.initial_cluster }}
        state: existing
{%- else %}
        initial_cluster: {{ etcd.initial_cluster | replace('https://', 'http://') | replace('http://', scheme ~ '://') }}
        state: new
{%- endif %}
    - unless: test -d {{ etcd.data_dir }}/member

# etcd reports ready only once it has a quorum: the first member waits for the others.
etcd-start-timeout:
  file.managed:
    - name: /etc/systemd/system/{{ etcd.service }}.service.d/timeout.conf
    - makedirs: true
    - contents: |
        [Service]
        TimeoutStartSec={{ etcd.start_timeout }}

etcd-bootstrap-unit:
  file.managed:
    - name: /etc/systemd/system/{{ etcd.service }}.service.d/bootstrap.conf
    - makedirs: true
    - contents: |
        [Service]
        EnvironmentFile=-{{ etcd.bootstrap_file }}

etcd-packages:
  pkg.installed:
    - pkgs: {{ etcd.packages | json }}
    - require:
      - file: etcd-config
      - file: etcd-bootstrap-config
      - file: etcd-start-timeout
      - file: etcd-bootstrap-unit

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
{%- if target == 'tls' %}
    - ca_bundle: {{ cluster.tls.ca_file }}
{%- endif %}
    - require:
      - service: etcd-service
{%- endif %}

