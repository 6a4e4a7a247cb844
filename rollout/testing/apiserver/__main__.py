"""`python -m rollout.testing.apiserver --port PORT`: serve until SIGINT/SIGTERM.

Prints one line, `fake kube-apiserver listening on http://127.0.0.1:PORT`,
once it accepts connections (use --port 0 for a free port and read it
there), optionally writes a kubeconfig, and exits 0 after a clean stop.
Faults and request counts are reachable over HTTP under /_fake/ (see
handler.Handler._admin) since the Python API is in another process.
With --run-pods it also runs the Deployments of rollout's (or Locust's) image
as local processes and serves the service proxy (rollout.testing.kubelet), so
`load.runner: kubernetes` works against it on one machine.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import DEFAULT_TOKEN, DEFAULT_USER, FakeApiServer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rollout.testing.apiserver",
                                description="Fake Kubernetes API server (for tests and benchmarks).")
    p.add_argument("--port", type=int, default=0, help="TCP port (0 = pick a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--controller-delay", type=float, default=0.05,
                   help="seconds before the simulated Deployment controller reacts")
    p.add_argument("--no-controller", action="store_true", help="never write Deployment status")
    p.add_argument("--progress-deadline", type=float, default=None,
                   help="override spec.progressDeadlineSeconds (seconds) for faulty Deployments")
    p.add_argument("--strict-namespaces", action="store_true",
                   help="require Namespace objects to exist (default: any namespace exists)")
    p.add_argument("--token", default=DEFAULT_TOKEN, help="token written to --kubeconfig")
    p.add_argument("--user", default=DEFAULT_USER, help="user name any bearer token maps to")
    p.add_argument("--require-auth", action="store_true", help="401 for requests without a token")
    p.add_argument("--kubeconfig", default=None, help="write a kubeconfig for this server here")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    p.add_argument("--run-pods", action="store_true",
                   help="run Deployments of rollout's (or Locust's) image as local processes and serve the service proxy "
                        "(rollout.testing.kubelet: `load.runner: kubernetes` works against this server)")
    p.add_argument("--pods-dir", default=None, help="with --run-pods: where the pods' files and logs go (default: a temporary directory)")
    args = p.parse_args(argv)

    server = FakeApiServer(port=args.port, host=args.host, controller=not args.no_controller,
                           controller_delay=args.controller_delay,
                           progress_deadline=args.progress_deadline,
                           implicit_namespaces=not args.strict_namespaces, token=args.token,
                           default_user=args.user, require_auth=args.require_auth,
                           verbose=args.verbose, kubelet=(args.pods_dir or True) if args.run_pods else False)
    done = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start()
    if args.kubeconfig:
        server.write_kubeconfig(args.kubeconfig)
    print(f"fake kube-apiserver listening on {server.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
    print("fake kube-apiserver stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
