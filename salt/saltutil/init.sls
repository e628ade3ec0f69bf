{#- The repo's custom modules on every minion; reports a change only when a file was synced.
    (state.apply syncs by itself; state.sls, used by the orchestration, does not.) #}
saltutil-sync-all:
  saltutil.sync_all:
    - refresh: true
