"""Serve a trained policy to robots over openpi's websocket protocol.

    gwp serve --policy runs/demo/finetune/policy --host 0.0.0.0 --port 8000 [--device cuda] [--dtype bfloat16]
        [--compile]

Top to bottom: check the arguments (one line and exit 2 for a mistake), load the policy
(``policy.Policy.from_pretrained``: a local folder or a Hub repo id; exit 1 when it cannot be
loaded; ``--compile`` runs its action-only steps under ``torch.compile``, compiled on the
first request), then serve until SIGINT / SIGTERM (:class:`policy.server.PolicyServer`). Once
listening, one line ``gwp serve: listening on ws://HOST:PORT`` goes to stdout (with
``--port 0`` the system picks the port: that line names it). ``GET /healthz`` on the same
port answers 200. Any openpi client connects unchanged::

    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    client = WebsocketClientPolicy("gpu-box", 8000)
    actions = client.infer({"observation/high": img, "observation/state": state, "prompt": "open the drawer"})["actions"]

Exit status: 0 after a clean shutdown; 1 the policy could not be loaded or the port could not be
bound; 2 a mistake in the arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from pipelines.usage import ArgumentParser, JobFailed, UsageError, command, local_or_repo_id

DTYPES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="gwp serve", description="Serve a policy over openpi's websocket protocol.")
    p.add_argument("--policy", required=True, help="a saved policy folder or a Hub repo id (owner/name)")
    p.add_argument("--revision", default=None, help="Hub revision of --policy")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port, printed once bound)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="the transformer's dtype")
    p.add_argument("--num-steps", type=int, default=None, help="Euler steps (default: the policy's own)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--compile",
        action="store_true",
        help="action-only Euler steps under torch.compile (CUDA graphs on CUDA); the first request compiles",
    )
    p.add_argument("--quiet", action="store_true", help="no per-connection log lines")
    return p


@command("gwp serve")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    local_or_repo_id("--policy", args.policy)
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in [0, 65535], got {args.port}")
    if args.num_steps is not None and args.num_steps < 1:
        raise UsageError(f"--num-steps must be >= 1, got {args.num_steps}")
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        raise UsageError(f"--device {args.device}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="gwp serve: %(message)s"
    )
    logging.getLogger("websockets").setLevel(logging.WARNING)

    from policy.api import Policy
    from policy.server import PolicyServer, policy_metadata

    try:
        policy = Policy.from_pretrained(
            args.policy, args.revision, device=device, num_steps=args.num_steps, compile=args.compile
        )
    except Exception as err:  # a missing file, a bad repo id, a config mismatch: say which policy
        raise JobFailed(f"cannot load policy {args.policy!r}: {type(err).__name__}: {err}") from err
    if args.dtype != "float32":
        policy.model.transformer.to(getattr(torch, args.dtype))
    server = PolicyServer(policy, args.host, args.port, policy_metadata(policy, args.policy))

    def ready(port: int) -> None:
        print(f"gwp serve: listening on ws://{args.host}:{port} (health: http://{args.host}:{port}/healthz)")
        sys.stdout.flush()

    try:
        asyncio.run(server.serve(ready))
    except OSError as err:  # the port is taken, the address is not ours
        raise JobFailed(f"cannot listen on {args.host}:{args.port}: {err}") from err
    print("gwp serve: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
