"""Write .state/images/images.json and sizes.json for the images .ci/images/build.sh just built.

Each image argument is `name|arch|ref|docker-archive path|build seconds`. Sizes, per image:
- compressed: the sum of the layers gzip'd (level 6, the default of gzip and of Go's compress/gzip that buildah,
  skopeo and docker push use): what a registry stores and a node pulls;
- unpacked: the sum of the uncompressed layer tars in the docker-archive (what the layers take unpacked on a node).
Gzip sizes are cached per layer digest in .state/images/layer-gzip-sizes.json: only new layers are compressed.
Standard library only: it runs with the host's python3, before any venv exists.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import zlib
from pathlib import Path
from typing import IO

UNITS = "bytes; MB = 10^6 bytes; compressed: each layer tar gzip'd at level 6, summed"


def gzip_size(stream: IO[bytes]) -> int:
    """Bytes of `stream` gzip'd at level 6, counted without writing them anywhere."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    total = 0
    while chunk := stream.read(1 << 20):
        total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def layer_sizes(archive: Path, cache: dict[str, int]) -> tuple[list[int], list[int], list[str]]:
    """(unpacked, gzip'd) size of each layer of a docker-archive, and its RepoTags."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        members = {m.name: m for m in tar.getmembers()}
        unpacked, compressed = [], []
        for layer in manifest[0]["Layers"]:
            member = members[layer]
            key = f"{layer}:{member.size}"  # layer files are named by their digest
            if key not in cache:
                cache[key] = gzip_size(tar.extractfile(member))  # type: ignore[arg-type]
            unpacked.append(member.size)
            compressed.append(cache[key])
    return unpacked, compressed, manifest[0]["RepoTags"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    for flag in ("driver", "storage", "base-ref", "base", "torch", "revision"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()

    cache_file = args.out / "layer-gzip-sizes.json"
    cache: dict[str, int] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    images, sizes = {}, {}
    for spec in args.images:
        name, arch, ref, archive, seconds = spec.split("|")
        archive_path = Path(archive)
        layers, gzipped, repo_tags = layer_sizes(archive_path, cache)
        cache_file.write_text(json.dumps(cache, indent=0) + "\n")
        compressed, unpacked = sum(gzipped), sum(layers)
        images[name] = {
            "ref": ref,
            "arch": arch,
            "id": Path(f"{archive}.id").read_text().strip(),
            "archive": str(archive_path),
            "archive_repo_tags": repo_tags,
            "build_seconds_last_run": int(seconds) if seconds else None,
        }
        sizes[name] = {
            "ref": ref,
            "arch": arch,
            "layers": len(layers),
            "layer_compressed_bytes": gzipped,
            "layer_unpacked_bytes": layers,
            "compressed_bytes": compressed,
            "unpacked_bytes": unpacked,
            "compressed_mb": round(compressed / 1e6, 1),
            "unpacked_mb": round(unpacked / 1e6, 1),
        }
        mb = sizes[name]
        print(
            f"[images-local] {ref} ({arch}): {mb['compressed_mb']:,} MB compressed, {mb['unpacked_mb']:,} MB unpacked"
        )

    storage = Path(args.storage)
    meta = {"base_ref": args.base_ref, "base": args.base, "torch": args.torch, "revision": args.revision}
    (args.out / "images.json").write_text(
        json.dumps(
            {
                **meta,
                "buildah": {
                    "driver": args.driver,
                    "root": str(storage / "storage"),
                    "runroot": str(storage / "run"),
                },
                "images": images,
            },
            indent=2,
        )
        + "\n"
    )
    (args.out / "sizes.json").write_text(json.dumps({**meta, "units": UNITS, "images": sizes}, indent=2) + "\n")


if __name__ == "__main__":
    main()
