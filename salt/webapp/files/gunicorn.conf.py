"""gunicorn's settings for the web app. Managed by Salt (webapp state). The unit's command line
gives the workers and the address; this file adds the hooks of Prometheus's multiprocess mode,
in which each worker writes its metrics to files in PROMETHEUS_MULTIPROC_DIR (db_app.py)."""

import glob
import os


def on_starting(server):
    """The master, before its first worker: files an earlier run left would be summed again.
    (systemd's RuntimeDirectory starts the service with an empty one; this covers a gunicorn
    started by hand.)"""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        for name in glob.glob(os.path.join(path, "*.db")):
            os.remove(name)


def child_exit(server, worker):
    """The master, when a worker has exited: its counts stay (counters only go up), its live
    gauges go."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)
