"""Expand an nfpm config template for scripts/build-packages.sh: ``${VAR}`` from the
environment everywhere (nfpm itself does not expand file paths), and the line
``# @BROKER_PLUGIN@`` into a contents entry for $CAMFLEET_BROKER_PLUGIN_SO when set.

    python scripts/nfpm_config.py TEMPLATE OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MARK = "# @BROKER_PLUGIN@"


def expand(template: str, env: dict[str, str]) -> str:
    plugin = env.get("CAMFLEET_BROKER_PLUGIN_SO", "")
    lines = []
    for line in template.splitlines():
        if line.strip().startswith(MARK):
            indent = line[: len(line) - len(line.lstrip())]
            if plugin:
                lines += [f"{indent}- src: {plugin}",
                          f"{indent}  dst: /usr/lib/camfleet/camfleet_acl.so",
                          f"{indent}  file_info:", f"{indent}    mode: 0644"]  # fmt: skip
            continue
        lines.append(line)
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return os.path.expandvars("\n".join(lines) + "\n")
    finally:
        os.environ.clear()
        os.environ.update(saved)


def main(argv: list[str]) -> int:
    template, out = Path(argv[0]), Path(argv[1])
    out.write_text(expand(template.read_text(), dict(os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
