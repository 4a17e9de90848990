# Remote commands to the node: what is accepted, checked before anything is done.
#
# A request (cmd/req, contract kind cmd_req: cid, cmd, args, deadline) is answered on
# cmd/res with the same cid: ok true and a result, or ok false and an error
# "<reason>: <detail>". Reasons: bad_request (the payload breaks the contract),
# unknown_command, bad_args, expired (past its deadline: not done), failed (tried and
# could not). A refused request changes nothing. The node answers every cid once: a
# redelivered request (QoS 1 after a reconnect or a reset) gets its first answer again,
# so a reboot is never done twice.
#
# Commands and their args (every arg listed; any other arg is refused):
#   ping                                    -> {"pong": true, "uptime_s", "firmware"}
#   reboot                                  -> {"rebooting": true}, then a reset
#   relay   action: "on" | "off" | "cycle"  box power on, off (held), or off for off_s
#           off_s: num 0.5..600 (cycle only; default the box_off_s setting)
#   read_sensors                            -> every reading the cabinet has now

try:
    import contract
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import contract

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BAD_REQUEST = "bad_request"
UNKNOWN = "unknown_command"
BAD_ARGS = "bad_args"
EXPIRED = "expired"
FAILED = "failed"

# command -> {arg: (type, required, allowed values or (min, max) or None)}
COMMANDS = {
    "ping": {},
    "reboot": {},
    "relay": {
        "action": ("str", True, ("on", "off", "cycle")),
        "off_s": ("num", False, (0.5, 600)),
    },
    "read_sensors": {},
}
_RECENT = 8  # cids remembered


class CommandError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason + ": " + detail)
        self.reason = reason
        self.detail = detail


def check(body: "dict[str, Any]", unix_now: float) -> "tuple[str, dict[str, Any]]":
    """(cmd, args) of a request that passed the contract, or CommandError."""
    name = body["cmd"]
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError(UNKNOWN, "%r (known: %s)" % (name, ", ".join(sorted(COMMANDS))))
    deadline = body.get("deadline")
    if deadline is not None and unix_now > deadline:
        raise CommandError(
            EXPIRED, "deadline %s passed %.1f s ago" % (deadline, unix_now - deadline)
        )
    args = body.get("args") or {}
    for key in args:
        if key not in spec:
            raise CommandError(BAD_ARGS, "%s takes no arg %r" % (name, key))
    for key, rule in spec.items():
        want, required, allowed = rule
        if key not in args:
            if required:
                raise CommandError(BAD_ARGS, "%s needs arg %r" % (name, key))
            continue
        value = args[key]
        if not contract.type_ok(value, want):
            raise CommandError(BAD_ARGS, "%r must be %s" % (key, want))
        if want == "str" and value not in allowed:
            raise CommandError(BAD_ARGS, "%r must be one of %s" % (key, ", ".join(allowed)))
        if want == "num" and not allowed[0] <= value <= allowed[1]:
            raise CommandError(BAD_ARGS, "%r must be in %s..%s" % (key, allowed[0], allowed[1]))
    if name == "relay" and "off_s" in args and args["action"] != "cycle":
        raise CommandError(BAD_ARGS, "off_s goes only with action 'cycle'")
    return name, args


def salvage_cid(payload: "bytes | str") -> str | None:
    """The cid of a request the contract refused, if it has a usable one (to answer it)."""
    import json

    try:
        text = payload if isinstance(payload, str) else bytes(payload).decode()
        body = json.loads(text)
    except (ValueError, UnicodeError):
        return None
    cid = body.get("cid") if isinstance(body, dict) else None
    if isinstance(cid, str) and 0 < len(cid) <= 64:
        return cid
    return None


def answer(cid: str, result: "dict[str, Any] | None", error: str | None = None) -> "dict[str, Any]":
    """A cmd_res body."""
    body: "dict[str, Any]" = {"cid": cid, "ok": error is None}
    if error is None:
        body["result"] = result or {}
    else:
        body["error"] = error[:200]
    return body


class Recent:
    """The last answers, by cid: a redelivered request gets its first answer again."""

    def __init__(self) -> None:
        self._items: "list[tuple[str, dict[str, Any]]]" = []

    def get(self, cid: str) -> "dict[str, Any] | None":
        for key, body in self._items:
            if key == cid:
                return body
        return None

    def add(self, cid: str, body: "dict[str, Any]") -> None:
        self._items.append((cid, body))
        if len(self._items) > _RECENT:
            self._items.pop(0)
