"""Render one host's states and config files through real Salt, masterless, without the lab.

    .venv/bin/python tests/render/render_host.py HOST [--pillar-root DIR] [--pillar JSON]

Prints JSON: {"errors": [...], "states": {id: {...}}, "files": {state id: {"name", "text"}}}.
The states are the host's highstate (pillar/top.sls and salt/top.sls decide which), as
``state.show_highstate`` gives them; every ``file.managed`` is rendered as the state would
render it (``file.get_managed`` with the state's own source, template and context), or taken
from its ``contents``. Run from the repo root: etc/salt/minion is the masterless minion.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import salt.client
import salt.config
import yaml

REPO = Path(__file__).resolve().parents[2]


def _args(chunk: list) -> dict:
    """A state's arguments as show_highstate lists them: [function, {key: value}, ...]."""
    args = {}
    for item in chunk:
        if isinstance(item, dict):
            args.update(item)
    return args


def render(host: str, pillar_root: str | None, pillar: dict | None, site: str | None = None) -> dict:
    # A root of its own: several renders may run at once without sharing a file cache.
    with tempfile.TemporaryDirectory(prefix="render-") as root:
        return _render(host, pillar_root, pillar, root, site)


def _render(host: str, pillar_root: str | None, pillar: dict | None, root: str,
            site: str | None = None) -> dict:
    opts = salt.config.minion_config(str(REPO / "etc" / "salt" / "minion"))
    opts["id"] = host
    if site:
        opts["pgcluster_site"] = site  # as bin/master --site sets it on the master
    for key in ("cachedir", "pki_dir", "sock_dir", "extension_modules", "pidfile", "log_file"):
        opts[key] = str(Path(root) / key)
    opts["log_level"] = "quiet"
    if pillar_root:
        opts["pillar_roots"] = {"base": [pillar_root]}
    if pillar:
        opts["pillar"] = pillar
    caller = salt.client.Caller(mopts=opts)
    high = caller.cmd("state.show_highstate")
    if not isinstance(high, dict):
        return {"errors": high if isinstance(high, list) else [str(high)], "states": {}, "files": {}}
    files = {}
    errors = []
    for state_id, body in high.items():
        if state_id.startswith("__") or "file" not in body:
            continue
        chunk = body["file"]
        args = _args(chunk)
        if "serialize" in chunk and args.get("serializer") == "yaml":
            text = yaml.safe_dump(json.loads(json.dumps(args["dataset"])), default_flow_style=False)
            files[state_id] = {"name": args.get("name", state_id), "text": text}
            continue
        if "managed" not in chunk:
            continue
        name = args.get("name", state_id)
        if "contents" in args:
            files[state_id] = {"name": name, "text": args["contents"]}
            continue
        if not args.get("template"):
            files[state_id] = {"name": name, "text": caller.cmd("cp.get_file_str", args["source"])}
            continue
        sfn, _, comment = caller.cmd(
            "file.get_managed", name, args.get("template"), args["source"], "", None,
            args.get("user"), args.get("group"), args.get("mode"), None, "base",
            args.get("context"), args.get("defaults"), skip_verify=True)
        if comment:
            errors.append(f"{state_id}: {comment}")
            continue
        files[state_id] = {"name": name, "text": Path(sfn).read_text()}
    return {"errors": errors, "states": high, "files": files}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("--pillar-root")
    parser.add_argument("--pillar", type=json.loads)
    parser.add_argument("--site", help="the master's pgcluster_site (pillar/top.sls): lab or yandex")
    args = parser.parse_args()
    json.dump(render(args.host, args.pillar_root, args.pillar, args.site), sys.stdout, default=str)


if __name__ == "__main__":
    main()
