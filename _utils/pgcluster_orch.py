"""
What the cluster's runners (``_runners/pgcluster_*.py``) share: calling execution module
functions and states on members from the master, each failure named. A failure raises
``CommandExecutionError``; the runner turns it into its ``Error``.
"""

from __future__ import annotations

import salt.client
from salt.exceptions import CommandExecutionError

# Salt's own wait for a minion's answer to one call (a state run is longer than a probe).
CALL_TIMEOUT = 300


def call(opts, members, fun, args=(), kwarg=None, *, timeout=CALL_TIMEOUT):
    """``fun`` on each of ``members`` (a list); their returns. A member that does not answer,
    or whose call fails, raises naming it."""
    client = salt.client.get_local_client(opts["conf_file"])
    answers = client.cmd(list(members), fun, arg=list(args), kwarg=kwarg or {},
                         tgt_type="list", timeout=timeout, full_return=True)
    returns = {}
    for member in members:
        answer = answers.get(member)
        if not isinstance(answer, dict) or "ret" not in answer:
            raise CommandExecutionError(f"{member} did not answer {fun} within {timeout} s")
        if answer.get("retcode", 0) != 0 or (isinstance(answer["ret"], str)
                                             and answer["ret"].startswith(("ERROR", "Error"))):
            raise CommandExecutionError(f"{member}: {fun}: {answer['ret']}")
        returns[member] = answer["ret"]
    return returns


def on_one(opts, members, fun, args=(), kwarg=None):
    """``fun`` on the first of ``members`` whose minion answers it well; its return. Raises the
    last member's error when none does."""
    error = CommandExecutionError(f"no member to ask {fun} of")
    for member in members:
        try:
            return call(opts, [member], fun, args, kwarg)[member]
        except CommandExecutionError as exc:
            error = exc
    raise error


def answering(opts, hosts, timeout=10):
    """The hosts among ``hosts`` whose minion answers a ping within ``timeout`` seconds."""
    client = salt.client.get_local_client(opts["conf_file"])
    answers = client.cmd(list(hosts), "test.ping", tgt_type="list", timeout=timeout)
    return sorted(h for h in hosts if answers.get(h) is True)


def state(opts, members, mods, pillar, state_id=None):
    """A state file (or one state of it, with its requisites) on each of ``members``; raises
    with each failing state's comment."""
    if state_id:
        rets = call(opts, members, "state.sls_id", [state_id], {"mods": mods, "pillar": pillar})
    else:
        rets = call(opts, members, "state.apply", [mods], {"pillar": pillar})
    failed = []
    for member, ret in rets.items():
        if not isinstance(ret, dict):
            failed.append(f"{member}: {ret}")
            continue
        failed += [f"{member}: {s.get('__id__', key)}: {s.get('comment')}"
                   for key, s in ret.items() if isinstance(s, dict) and s.get("result") is False]
    if failed:
        raise CommandExecutionError(f"state {mods}: " + "; ".join(failed))


def merged(base, over):
    """``over`` over ``base``, nested mappings merged (as Salt merges a pillar override)."""
    result = dict(base)
    for key, value in over.items():
        result[key] = (merged(base[key], value) if isinstance(value, dict)
                       and isinstance(base.get(key), dict) else value)
    return result
