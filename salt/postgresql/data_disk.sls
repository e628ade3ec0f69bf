{#- PostgreSQL's own disk (pgcluster:postgresql:data_disk), mounted on the postgres user's home
    before the packages put anything there. Nothing when the data stays on the system disk. #}
{%- from "postgresql/map.jinja" import postgresql with context %}
{%- set disk = postgresql.data_disk %}
{%- if disk.device %}

# Formatted only when blank; a disk holding anything else, or a home that already holds
# files, stops here with what was found.
postgresql-data-disk:
  pgcluster.filesystem:
    - name: {{ disk.device }}
    - fstype: {{ disk.fstype }}
    - mountpoint: {{ postgresql.home }}

# A mount unit rather than an fstab line: the same on a VM and in the lab's containers (whose
# systemd skips fstab's device lines), and what Patroni's RequiresMountsFor= waits for.
# Wanted, not required, by local-fs.target: a VM whose disk is missing still boots and its
# minion answers; Patroni does not start.
postgresql-data-disk-unit:
  file.managed:
    - name: /etc/systemd/system/{{ postgresql.mount_unit }}
    - contents: |
        # Managed by Salt (postgresql.data_disk): pgcluster:postgresql:data_disk.
        [Unit]
        Description=PostgreSQL's data disk
        [Mount]
        What={{ disk.device }}
        Where={{ postgresql.home }}
        Type={{ disk.fstype }}
        Options={{ disk.mount_options }}
        [Install]
        WantedBy=local-fs.target
    - require:
      - pgcluster: postgresql-data-disk

postgresql-data-disk-mounted:
  service.running:
    - name: {{ postgresql.mount_unit }}
    - enable: true
    # New options are applied by remounting (reload); stopping would unmount the live data.
    - reload: true
    - watch:
      - file: postgresql-data-disk-unit
{%- endif %}
