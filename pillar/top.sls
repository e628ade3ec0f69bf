# The cluster, described once (pillar/cluster.sls). The passwords come from the master's
# ext_pillar pgcluster_credentials (_pillar/), which reads the members from this pillar.
base:
  '*':
    - cluster
