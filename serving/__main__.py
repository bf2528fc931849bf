"""`python -m serving --model X [--model-name N] [--http-port P] [--threads T]` (the container entrypoint)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--model", required=True, help="s3://models/<name>/<version> | champion | latest | directory")
    parser.add_argument("--model-name", default="gtsrb-classifier", help="name in the URL and in the registry")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=None, help="enable gRPC on this port (off by default)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where registry downloads are kept")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--max-pixels", type=int, default=4_000_000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported late so a bad flag is reported before torch and the model are loaded.
    from serving.server import ServeConfig, serve
    from tsr.local_minio import store_session
    from tsr.registry import RegistryError, parse_model_spec
    from tsr.store import StoreError

    cfg = ServeConfig(
        model=args.model,
        model_name=args.model_name,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        threads=args.threads,
        max_batch=args.max_batch,
        max_pixels=args.max_pixels,
    )
    if args.cache_dir is not None:
        cfg.cache_dir = args.cache_dir
    try:
        spec = parse_model_spec(args.model, args.model_name)
        if spec.needs_store:
            with store_session() as store:
                serve(cfg, store)
        else:
            serve(cfg, None)
    except (ValueError, FileNotFoundError, RegistryError, StoreError) as exc:
        # A missing, unreadable or tampered model: one line and exit code 2, not a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
