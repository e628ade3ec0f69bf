{#- The whole cluster back to a point in time from its backups, or to the newest archived WAL:
    .venv/bin/salt-run state.orchestrate orch.restore pillar='{ "restore": { "target": "2026-12-01T21:00:00+00:00" } }'
    .venv/bin/salt-run state.orchestrate orch.restore pillar='{ "restore": { "target": "latest" } }'
    restore:repo (1, 2, ... in pgcluster:pgbackrest:repositories' order) restores from that
    repository; by default pgBackRest takes the first that holds a backup for the target.
    The first step refuses, changing nothing, a target that is missing, in the future, before
    the oldest backup, or a repository that cannot be read. Then: the leader's WAL archived up
    to now; Patroni stopped everywhere; the cluster's keys removed from etcd; every data
    directory set aside (data_dir.before-restore: nothing is deleted); the first member
    bootstrapped by Patroni from the backup, recovered to the target and promoted (a new
    timeline); a full backup of the new timeline, from which the others are rebuilt as its
    replicas; the cluster healthy. #}
{%- set cluster = salt['pillar.get']('pgcluster') %}
{%- set target = salt['pillar.get']('restore:target', '') %}
{%- set repo = salt['pillar.get']('restore:repo') or '' %}
{#- How long the first member's restore and recovery may take (a large database: hours). #}
{%- set timeout = salt['pillar.get']('restore:timeout', 6 * 3600) | int %}
{%- set started = None | strftime('%s') %}
{%- set members = cluster.members | sort %}
{%- set first = members[0] %}
{%- set patroni_service = salt['pillar.get']('pgcluster:patroni:service', 'patroni') %}

restore-check:
  salt.function:
    - name: pgbackrest.restore_check
    - tgt: {{ first }}
    - kwarg:
        target: {{ target | string | json }}
        repo: {{ repo | string | json }}
    - failhard: true

# A leader that is up archives what it has, so a target seconds ago is reachable; an archive
# that fails here stops the restore before anything changed.
restore-flush-archive:
  salt.function:
    - name: pgbackrest.flush_archive
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - require:
      - salt: restore-check
    - failhard: true

restore-stop-patroni:
  salt.function:
    - name: service.stop
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - arg:
      - {{ patroni_service }}
    - require:
      - salt: restore-flush-archive
    - failhard: true

restore-clear-dcs:
  salt.function:
    - name: etcd_cluster.remove_patroni_keys
    - tgt: {{ first }}
    - require:
      - salt: restore-stop-patroni
    - failhard: true

restore-set-aside-data:
  salt.function:
    - name: pgbackrest.set_aside_data
    - tgt: {{ members | join(',') }}
    - tgt_type: list
    - require:
      - salt: restore-clear-dcs
    - failhard: true

# Patroni on the first member, its bootstrap a restore to the target.
restore-leader:
  salt.state:
    - tgt: {{ first }}
    - sls: patroni
    - pillar:
        restore:
          target: {{ target | string | json }}
          repo: {{ repo | string | json }}
    - require:
      - salt: restore-set-aside-data
    - failhard: true

# Until it leads, recovered and promoted; a failed bootstrap stops Patroni there and says why.
restore-leader-restored:
  salt.function:
    - name: pgbackrest.wait_restored
    - tgt: {{ first }}
    - kwarg:
        since: '@{{ started }}'
        timeout: {{ timeout }}
        target: {{ target | string | json }}
        repo: {{ repo | string | json }}
    - timeout: {{ timeout + 60 }}
    - require:
      - salt: restore-leader
    - failhard: true

restore-clear-recovery-target:
  salt.function:
    - name: pgbackrest.clear_restore_settings
    - tgt: {{ first }}
    - require:
      - salt: restore-leader-restored
    - failhard: true

# Its configuration back to the usual bootstrap (inert once the cluster exists).
restore-leader-config:
  salt.state:
    - tgt: {{ first }}
    - sls: patroni
    - require:
      - salt: restore-clear-recovery-target
    - failhard: true

# A backup of the new timeline, from the leader (there is no standby yet): the replicas are
# restored from it, and it is the base of the next point-in-time restore.
restore-new-backup:
  salt.function:
    - name: pgbackrest.backup
    - tgt: {{ first }}
    - arg:
      - full
    - kwarg:
        from_standby: false
    - require:
      - salt: restore-leader-config
    - failhard: true

# The others start empty: Patroni restores each from that backup, then it streams.
restore-replicas:
  salt.state:
    - tgt: {{ members[1:] | join(',') }}
    - tgt_type: list
    - sls: patroni
    - require:
      - salt: restore-new-backup

restore-healthy:
  salt.function:
    - name: patroni.wait_healthy
    - tgt: {{ first }}
    - kwarg:
        timeout: 300
    - require:
      - salt: restore-replicas
