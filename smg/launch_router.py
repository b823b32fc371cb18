"""`python -m smg.launch_router ...`: the reference's tooling starts its gateway this way.

Scripts, Dockerfiles and Kubernetes manifests written for the reference run
`python -m smg.launch_router <flags>`; this module makes that command start the
gateway exactly as `smg launch <flags>` does (same flags, same one-line errors
and exit codes), so switching gateways changes none of them. Only the gateway:
`serve`, `sim-worker` and `mesh` stay behind `smg`/`python -m smg`.

Guarded like `smg.__main__`, so that importing this module (multiprocessing's
spawn re-imports the main module, as do some tools) does not start a gateway.
"""

import sys

from smg.cli import main


def launch() -> int:
    """`smg launch` with this process's arguments; its exit status."""
    return main(["launch", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(launch())
