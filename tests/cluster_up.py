"""`make cluster-up`: the test tier's control plane, KServe and a node, for people, until Ctrl-C.

    make cluster-up                  # or: .venv/bin/python -m tests.cluster_up [--root DIR] [--no-kserve]
    export KUBECONFIG=$(...)         # the one line it prints on stdout is the admin kubeconfig's path
    kubectl get nodes

Everything runs as in the tests (tests/cluster_plane.py, tests/cluster_node.py): etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KServe's manager on 127.0.0.1, the node (kubelet, containerd)
in its own namespaces with the pause and nettest images imported. Images of your own go in with
`ctr -n k8s.io images import` inside the node: the script prints the command. Ctrl-C (or SIGTERM, SIGHUP)
stops everything and removes the state directory; if the script is killed outright, its servers and the node
die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

from _pytest.outcomes import Failed

from tests.cluster_node import node
from tests.cluster_plane import control_plane
from tsr.local.checkout import REPO_ROOT


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_up", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO_ROOT / ".state" / "cluster-up", help="state directory")
    parser.add_argument("--no-kserve", action="store_true", help="without KServe's manager")
    args = parser.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # like Ctrl-C: stop everything (a closed terminal too)
        signal.signal(sig, _interrupt)
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    started = time.monotonic()
    try:
        with control_plane(args.root / "plane", kserve=not args.no_kserve) as cp, node(cp, args.root / "node") as n:
            log = sys.stderr
            print(
                f"control plane {cp.url} and node {n.name} ({n.ip}) up in {time.monotonic() - started:.0f} s", file=log
            )
            print(
                f"  import an image: nsenter --target {n.init_pid} --user --mount --net --pid -- "
                f"{n.tools['ctr']} -n k8s.io images import IMAGE.tar",
                file=log,
            )
            print("  logs: " + str(args.root) + "/{plane,node}/*.log; Ctrl-C stops everything", file=log)
            print(cp.kubeconfig, flush=True)
            while True:
                n.assert_running()
                cp.assert_running()
                time.sleep(2)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    except Failed as exc:  # a missing tool: the fixtures name the make target
        print(f"cluster-up: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(args.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
