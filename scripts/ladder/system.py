"""Debian packages the project needs, in one list: the sandbox cluster's and the tests'.

`make demo` installs the sandbox group, `make test` both; `.ci/run` only bootstraps make
and venv, then calls `make test`, so a fresh machine needs nothing installed by hand.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

PACKAGES = {
    # Slurm and munge for the sandbox cluster; namespaces and veths need iproute2 and util-linux.
    "sandbox": ["slurm-wlm", "munge", "iproute2", "util-linux"],
    # The sandbox's accounting: slurmdbd on a MariaDB server of its own (ladder.sandbox --no-accounting: none).
    "accounting": ["slurmdbd", "mariadb-server"],
    # The report test renders the HTML headless; the fault tests firewall a node's Ray ports; the site
    # test loads a module with Lmod, the module system a site's nodes have (env.modules).
    "test": ["chromium", "nftables", "lmod"],
}
# Debian starts these on install; the sandbox runs its own.
SERVICES = ("slurmctld", "slurmd", "munge", "slurmdbd", "mariadb")


# The command each package is needed for: present on PATH counts as installed (the GPU machine
# unpacks carried debs with dpkg -x and has no apt source; gpu/stage.sh).
COMMANDS = {"slurm-wlm": "slurmctld", "munge": "munged", "iproute2": "ip", "util-linux": "nsenter",
            "chromium": "chromium", "nftables": "nft", "lmod": "/usr/share/lmod/lmod/libexec/lmod",
            "slurmdbd": "slurmdbd", "mariadb-server": "mariadbd"}


def installed(package: str) -> bool:
    command = COMMANDS.get(package)
    if command and shutil.which(command, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
        return True
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.endswith(" installed")


def ensure(*groups: str) -> list[str]:
    """Install the groups' missing packages (apt, as root); returns what was installed."""
    missing = [p for g in groups for p in PACKAGES[g] if not installed(p)]
    if not missing:
        return []
    if os.geteuid() != 0:
        raise SystemExit(f"missing Debian packages {missing}: as root, apt-get install {' '.join(missing)}")
    print(f"installing {missing}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdin=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env,
                   stdin=subprocess.DEVNULL)
    for svc in SERVICES:
        subprocess.run(["service", svc, "stop"], capture_output=True)
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("groups", nargs="+", choices=sorted(PACKAGES))
    ensure(*ap.parse_args(argv).groups)
    return 0


if __name__ == "__main__":
    sys.exit(main())
