# The node's configuration: what it boots with, and what the fleet may change.
#
# Two tables. LOCAL keys live only in the node's own config file (identity, broker, TLS
# files, hardware, Wi-Fi); they need a reboot to change. SETTINGS keys are the node's
# behaviour (heartbeat period, the paired edge box and how it is supervised, cabinet
# thresholds): the config file gives their boot values, and the fleet's desired config
# (config/desired, retained, versioned) overrides them. A desired config is declarative:
# a key it leaves out takes its boot value, so the same version always means the same
# behaviour. Checking is all or nothing: one bad key refuses the whole config, and the
# node keeps what it had.
#
# Plain functions on dicts; the state files go through fsutil.atomic_write.

import json

try:
    import contract
    import fsutil
except ImportError:  # CPython: the firmware is the package ``firmware``
    from firmware import contract, fsutil

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# One line per key: "name type [default [min max]]"; no default: required; "-" is "".
# (Lines of text, not dicts of tuples: a third of the RAM on a board.)
LOCAL = (
    "device_id str",
    "broker_host str",
    "broker_port int 8883 1 65535",
    "server_hostname str -",  # TLS name to check; "" = broker_host
    "ca str root.der",  # DER files; relative to the config file
    "cert str cert.der",
    "key str key.der",
    "keepalive_s int 60 1 65535",
    "reconnect_base_s num 1.0 0.01 3600",
    "reconnect_cap_s num 30.0 0.1 60",  # back within a minute of the network's return
    "reconnect_first_spread_s num 20.0 0 3600",
    "connect_timeout_s num 5 0.5 120",
    "ack_timeout_s num 10 0.5 120",
    "watchdog_ms int 8000 1000 600000",
    "task_stall_s num 60 1 3600",  # a task silent this long starves the watchdog
    "max_packet int 4096 1024 262144",  # larger PUBLISHes are acked and dropped
    "hal str sim",
    "sim_dir str sim",
    "state_dir str state",  # flash: event ring, applied config, notes
    "ring_slots int 64 4 4096",  # events kept while offline
    # receipts (docs/protocol.md): an event leaves the ring on the server's receipt, and
    # goes again after this long without one (doubling to the cap); 0 = no receipts
    # (it leaves on PUBACK, for a server that does not send them)
    "receipt_timeout_s num 10 0 3600",
    "receipt_timeout_cap_s num 300 1 86400",
    "pins dict",
    "battery_scale num 5.0 0.1 100",  # volts at the battery per volt at the ADC
    "wifi_ssid str -",  # boards only; the key is never logged
    "wifi_key str -",
    "ntp_host str -",  # "" = keep the clock as it is
    # updates (updater.py, docs/firmware.md "Updates")
    "ota_url str -",  # https://<host>/ota: TUF repository base; "" = no updates
    "ota_keys dict",  # pinned targets keys: key id -> ed25519 public key (hex)
    "ota_threshold int 1 1 16",  # signatures of pinned keys needed
    "ota_max_kb int 512 8 8192",  # largest firmware bundle taken
    "ota_attempts int 3 1 10",  # boots of a new release without a commit before rollback
    "ota_commit_heartbeats int 2 1 1000",  # heartbeats sent before a new release commits
    "ota_trial_s num 300 5 86400",  # time to commit when update_desired gives no trial_s
)
_OPTIONAL = ("pins", "ota_keys")  # no default in the line, but not required: {}
_PATHS = ("ca", "cert", "key", "sim_dir", "state_dir")

SETTINGS = (
    "heartbeat_s num 60 1 86400",
    "sensor_s num 1 0.25 3600",  # cabinet sensors read this often
    "box_id str -",  # the paired edge box; "" = none
    "box_deadline_s num 300 2 86400",  # box silent this long: power-cycle it
    "box_off_s num 10 0.5 600",  # power stays cut this long
    "box_boot_s num 300 1 86400",  # grace after power-on; doubles per failed cycle
    "box_max_cycles int 3 0 48",  # automatic cycles in any 24 h; 0 = never
    "temp_high_c num 60 -40 125",
    "temp_low_c num -20 -60 100",
    "humidity_high_pct num 90 1 100",
    "battery_low_v num 11.5 0 60",
)
HALS = ("sim", "machine", "none")


def _number(text: str) -> "int | float":
    return float(text) if "." in text else int(text)


def spec(line: str) -> "tuple[str, str, Any, Any, Any]":
    """(name, type, default or None when required, min or None, max or None)."""
    parts = line.split(" ")
    name, want = parts[0], parts[1]
    default: "Any" = None
    if len(parts) > 2:
        text = parts[2]
        default = "" if text == "-" else (text if want == "str" else _number(text))
    elif name in _OPTIONAL:
        default = {}
    lo = _number(parts[3]) if len(parts) > 3 else None
    hi = _number(parts[4]) if len(parts) > 4 else None
    return name, want, default, lo, hi


def names(table: "tuple[str, ...]") -> list[str]:
    return [line.split(" ", 1)[0] for line in table]


class ConfigError(Exception):
    """A configuration is not usable; the message says which key and why."""


def _check(table: "tuple[str, ...]", raw: "dict[str, Any]", out: "dict[str, Any]") -> None:
    for line in table:
        key, want, _default, lo, hi = spec(line)
        if key not in raw:
            continue
        value = raw[key]
        if not contract.type_ok(value, want):
            raise ConfigError("%r must be %s" % (key, want))
        if lo is not None and (value < lo or value > hi):
            raise ConfigError("%r must be in %s..%s" % (key, lo, hi))
        if want == "str" and len(value) > 256:
            raise ConfigError("%r is too long" % (key,))
        out[key] = value


def _defaults(table: "tuple[str, ...]", out: "dict[str, Any]") -> None:
    for line in table:
        key, _want, default, _lo, _hi = spec(line)
        if key not in out:
            if default is None:
                raise ConfigError("missing key %r" % (key,))
            out[key] = default


def _cross_checks(settings: "dict[str, Any]", device_id: str) -> None:
    box = settings["box_id"]
    if box and not contract.valid_device_id(box):
        raise ConfigError("'box_id' %r is not a device id" % (box,))
    if box == device_id:
        raise ConfigError("'box_id' is this node itself")
    if settings["temp_low_c"] >= settings["temp_high_c"]:
        raise ConfigError("'temp_low_c' must be below 'temp_high_c'")


def _join(base_dir: str, path: str) -> str:
    if not base_dir or path.startswith("/"):
        return path
    return base_dir.rstrip("/") + "/" + path


def load_config(raw: object, base_dir: str = "") -> "dict[str, Any]":
    """Check a config file's dict and fill in defaults. Relative paths are from base_dir."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object")
    known = names(LOCAL) + names(SETTINGS)
    for key in raw:
        if key not in known:
            raise ConfigError("unknown config key %r" % (key,))
    cfg: "dict[str, Any]" = {}
    _check(LOCAL, raw, cfg)
    _check(SETTINGS, raw, cfg)
    _defaults(LOCAL, cfg)
    _defaults(SETTINGS, cfg)
    if not contract.valid_device_id(cfg["device_id"]):
        raise ConfigError("invalid device_id %r" % (cfg["device_id"],))
    if cfg["hal"] not in HALS:
        raise ConfigError("hal must be one of %s" % (HALS,))
    _cross_checks(cfg, cfg["device_id"])
    if not cfg["server_hostname"]:
        cfg["server_hostname"] = cfg["broker_host"]
    for key in _PATHS:
        cfg[key] = _join(base_dir, cfg[key])
    return cfg


def load_config_file(path: str) -> "dict[str, Any]":
    with open(path) as f:
        raw = json.load(f)
    slash = path.rfind("/")
    return load_config(raw, path[:slash] if slash > 0 else "")


def boot_settings(cfg: "dict[str, Any]") -> "dict[str, Any]":
    """The SETTINGS part of a checked config file: what a desired config starts from."""
    out = {}
    for key in names(SETTINGS):
        out[key] = cfg[key]
    return out


def desired_settings(boot: "dict[str, Any]", desired: object, device_id: str) -> "dict[str, Any]":
    """The settings a desired config asks for, on top of the boot values.

    Refuses (ConfigError) unknown keys, local-only keys, wrong types, values out of
    range and contradictions; the caller then keeps its current settings.
    """
    if not isinstance(desired, dict):
        raise ConfigError("config must be an object")
    local, settings = names(LOCAL), names(SETTINGS)
    for key in desired:
        if key in local:
            raise ConfigError("%r can only be set in the node's config file" % (key,))
        if key not in settings:
            raise ConfigError("unknown setting %r" % (key,))
    out = {}
    for key in boot:
        out[key] = boot[key]
    _check(SETTINGS, desired, out)
    _cross_checks(out, device_id)
    return out


# ---------------------------------------------------------------- state files


def read_json(path: str) -> "Any":
    """A state file's content, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, value: object) -> None:
    fsutil.atomic_write(path, json.dumps(value).encode())
