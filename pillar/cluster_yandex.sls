# The cluster on Yandex Cloud (the salt-master started with bin/master start --site yandex):
# the lab's cluster (pillar/cluster.sls) with each member in a zone of its own, at the address
# cloud.maps.d/yandex.map gives its VM in that zone's subnet (cloud.providers.d/yandex.conf:
# network:subnets). Every key and its default: pillar.example. Checked by pgcluster.config.
pgcluster:
  name: pg-cluster-skynet
  members:
    postgres-srv1:
      address: 10.0.1.11        # ru-central1-a
    postgres-srv2:
      address: 10.0.2.12        # ru-central1-b
    postgres-srv3:
      address: 10.0.3.13        # ru-central1-d
  web:
    web:
      address: 10.0.1.10        # ru-central1-a
  postgresql:
    # PostgreSQL's own disk (the profile's secondary disk pgdata), mounted on its home.
    data_disk:
      device: /dev/disk/by-id/virtio-pgdata
  # Backups in two repositories: the posix one on web, and Yandex Object Storage, which
  # outlives every VM of the cluster. Before the deployment (README, "The Yandex path"): make
  # the bucket (its name is global to Object Storage: choose your own) and a service account
  # with the storage.editor role and a static access key, and write the key to the file named
  # below (access_key_id: ..., secret_access_key: ...; mode 0600; pillar/generated/ is out of
  # git). The VMs reach storage.yandexcloud.net through the NAT gateway (ensure_network).
  # Without Object Storage, drop the s3 repository: the posix one stays.
  pgbackrest:
    repositories:
      - type: posix
        path: /var/lib/pgbackrest
      - type: s3
        path: /pgbackrest
        s3:
          endpoint: storage.yandexcloud.net
          region: ru-central1
          bucket: pg-cluster-skynet-backups
          # Object Storage serves both styles; path style needs no name per bucket.
          uri_style: path
          credentials_file: generated/object-storage.yaml
  # The hosts' certificates from your organisation's CA: its certificate (the issuing CA
  # first, then its chain) and its key, on the salt-master, out of git (README, "The Yandex
  # path"; a key kept in an HSM or Vault signs through sign_command instead: pillar.example).
  # Without a CA of your own, drop tls: the master makes the cluster's own.
  tls:
    ca:
      certificate: generated/org-ca/ca.crt
      key: generated/org-ca/ca.key
