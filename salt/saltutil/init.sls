{#- The repo's custom modules on every minion; reports a change only when a file was synced.
    (state.apply syncs by itself; state.sls, used by the orchestration, does not.)
    Only the kinds the repo has (salt/_modules, _states, _utils, _output; a test checks that
    every salt/_* folder is here): saltutil.sync_all asks the master for each of Salt's twenty
    kinds over a new authenticated channel, 13 s on the lab's minions, these four 3 s. #}
saltutil-sync-utils:
  saltutil.sync_utils:
    - saltenv: base
    - refresh: false

saltutil-sync-modules:
  saltutil.sync_modules:
    - saltenv: base
    - refresh: false
    - require:
      - saltutil: saltutil-sync-utils

saltutil-sync-states:
  saltutil.sync_states:
    - saltenv: base
    - refresh: false
    - require:
      - saltutil: saltutil-sync-modules

# The last one reloads the minion's modules, with everything above in place.
saltutil-sync-output:
  saltutil.sync_output:
    - saltenv: base
    - refresh: true
    - require:
      - saltutil: saltutil-sync-states
