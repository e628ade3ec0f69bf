{#- The repo's custom modules on every minion, then the minion's pillar refreshed; reports a
    change only when a file was synced. (state.apply syncs by itself; state.sls, used by the
    orchestration, does not.)
    Only the kinds the repo has (salt/_modules, _states, _utils, _output; a test checks that
    every salt/_* folder is here): saltutil.sync_all asks the master for each of Salt's twenty
    kinds over a new authenticated channel, 13 s on the lab's minions, these 2 s. #}
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

saltutil-sync-output:
  saltutil.sync_output:
    - saltenv: base
    - refresh: false
    - require:
      - saltutil: saltutil-sync-states

# No custom grains here, but syncing them is the sync that refreshes the minion's pillar (and
# with it its modules), as sync_all did: the runners' calls to minions read the pillar the
# minion holds, and a member just added to pillar must be in it (the member test saw one
# missing when only the modules were refreshed).
saltutil-sync-grains-refresh-pillar:
  saltutil.sync_grains:
    - saltenv: base
    - refresh: true
    - require:
      - saltutil: saltutil-sync-output
