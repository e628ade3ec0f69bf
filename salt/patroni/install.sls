{#- Patroni 4.1 from PyPI in its own virtual environment, and patronictl on the PATH: what
    the orchestration installs on every member beside etcd and PostgreSQL, before the first
    member bootstraps (patroni, which includes this, then only configures and starts). #}
{%- from "patroni/map.jinja" import patroni, cluster with context %}

patroni-packages:
  pkg.installed:
    - pkgs: {{ patroni.packages | json }}

patroni-venv:
  cmd.run:
    - name: python3 -m venv {{ patroni.venv }}
    - creates: {{ patroni.venv }}/bin/python
    - require:
      - pkg: patroni-packages

patroni-pip:
  pip.installed:
    - pkgs:
      - patroni[etcd3]=={{ cluster.patroni.version }}
      - psycopg2-binary=={{ cluster.patroni.psycopg2_version }}
    - bin_env: {{ patroni.venv }}
    - require:
      - cmd: patroni-venv

patroni-on-path:
  file.symlink:
    - name: /usr/local/bin/patroni
    - target: {{ patroni.venv }}/bin/patroni
    - require:
      - pip: patroni-pip

# patronictl on the PATH reads this host's config without -c, and ends within retry_timeout
# when no etcd endpoint answers (Patroni's own waits for one without end).
patroni-bounded-patronictl:
  file.managed:
    - name: {{ patroni.venv }}/bounded_patronictl.py
    - source: salt://patroni/files/bounded_patronictl.py
    - mode: '0644'
    - require:
      - pip: patroni-pip

patronictl-on-path:
  file.managed:
    - name: /usr/local/bin/patronictl
    - source: salt://patroni/files/patronictl.sh.jinja
    - template: jinja
    - mode: '0755'
    # Replaces the symlink earlier versions of this state made, not the file it points to.
    - follow_symlinks: false
    - context:
        venv: {{ patroni.venv }}
        script: {{ patroni.venv }}/bounded_patronictl.py
        config_file: {{ patroni.config_file }}
        wait: {{ cluster.patroni.retry_timeout }}
    - require:
      - file: patroni-bounded-patronictl
