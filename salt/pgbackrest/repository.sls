{#- The repository host: its posix repositories, the stanza, a first full backup into every
    repository, and the scheduled backups. Applied to the web hosts; only pgcluster:pgbackrest:host
    (the first web host by default) takes it. Needs a running leader (orch.cluster applies it
    once Patroni is up). #}
{%- from "pgbackrest/map.jinja" import pgbackrest, cluster with context %}
{%- set stanza = pgbackrest.stanza %}
{%- set lock = pgbackrest.spool_path ~ '/backup.lock' %}
{%- set run_as = pgbackrest.user %}

include:
  - pgbackrest
{%- if pgbackrest.enabled and grains.id == pgbackrest.host %}
{%-   for repo in pgbackrest.repositories if repo.type == 'posix' %}

pgbackrest-repository-{{ repo.path }}:
  file.directory:
    - name: {{ repo.path }}
    - user: {{ pgbackrest.user }}
    - group: {{ pgbackrest.group }}
    - mode: '0750'
    - makedirs: true
    - require:
      - pkg: pgbackrest-package
    - require_in:
      - cmd: pgbackrest-stanza
{%-   endfor %}

# Made once in every repository (stanza-create adds it where it is missing); it reads the
# leader's system identifier through the members' TLS servers.
pgbackrest-stanza:
  cmd.run:
    - name: pgbackrest --stanza={{ stanza }} stanza-create
    - runas: {{ run_as }}
    - unless:
      - fun: pgbackrest.stanza_ready
    - require:
      - service: pgbackrest-server

{%-   for repo in pgbackrest.repositories %}
{%-     set number = loop.index %}

# Point-in-time recovery from the first minute: a full backup into a repository that has none.
# It also proves that the leader's WAL reaches this repository: the backup waits for its first
# and last segments there (archive-check), so a separate `pgbackrest check` would only repeat it.
pgbackrest-first-backup-repo{{ number }}:
  cmd.run:
    - name: flock {{ lock }} pgbackrest --stanza={{ stanza }} --repo={{ number }} --type=full backup
    - runas: {{ run_as }}
    - unless:
      - fun: pgbackrest.has_backup
        repo: {{ number }}
    - require:
      - cmd: pgbackrest-stanza
{%-   endfor %}
{%- endif %}

{#- The schedule: a timer per repository and kind of backup; none where it is off (and on
    any other host). #}
{%- for number in range(1, 5) %}
{%-   set repo_on = pgbackrest.enabled and grains.id == pgbackrest.host
                    and number <= pgbackrest.repositories | length %}
{%-   for type in ('full', 'diff', 'incr') %}
{%-     set unit = 'pgbackrest-backup-repo' ~ number ~ '-' ~ type %}
{%-     set calendar = pgbackrest.schedule[type] if repo_on else None %}
{%-     if calendar %}

{{ unit }}-service:
  file.managed:
    - name: /etc/systemd/system/{{ unit }}.service
    - source: salt://pgbackrest/files/backup.service.jinja
    - template: jinja
    - context:
        type: {{ type }}
        repo: {{ number }}
        stanza: {{ stanza }}
        lock: {{ lock }}
        user: {{ pgbackrest.user }}
        group: {{ pgbackrest.group }}

{{ unit }}-timer:
  file.managed:
    - name: /etc/systemd/system/{{ unit }}.timer
    - source: salt://pgbackrest/files/backup.timer.jinja
    - template: jinja
    - context:
        type: {{ type }}
        repo: {{ number }}
        stanza: {{ stanza }}
        calendar: {{ calendar | json }}
    # systemd's own reading of the calendar event: a typo fails here, not silently later.
    - check_cmd: /bin/sh -c 'systemd-analyze calendar "$(sed -n "s/^OnCalendar=//p" "$0")" >/dev/null'

{{ unit }}-scheduled:
  service.running:
    - name: {{ unit }}.timer
    - enable: true
    - watch:
      - file: {{ unit }}-service
      - file: {{ unit }}-timer
{%-     else %}

{{ unit }}-scheduled:
  service.dead:
    - name: {{ unit }}.timer
    - enable: false
    - onlyif: test -f /etc/systemd/system/{{ unit }}.timer

{{ unit }}-files:
  file.absent:
    - names:
      - /etc/systemd/system/{{ unit }}.timer
      - /etc/systemd/system/{{ unit }}.service
    - require:
      - service: {{ unit }}-scheduled
{%-     endif %}
{%-   endfor %}
{%- endfor %}
