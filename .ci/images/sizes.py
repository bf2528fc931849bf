"""Write .state/images/images.json and sizes.json for the images .ci/images/build.sh just built.

Each image argument is `name|arch|ref|docker-archive path|build seconds`. Sizes, per image:
- compressed: the sum of the gzip'd layers in the OCI layout .state/images/oci (what a registry stores and a
  node pulls);
- unpacked: the sum of the uncompressed layer tars in the docker-archive (what the layers take unpacked on a node).
Standard library only: it runs with the host's python3, before any venv exists.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path


def oci_manifest(layout: Path, ref_name: str) -> dict:
    index = json.loads((layout / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref_name:
            algo, digest = entry["digest"].split(":", 1)
            return json.loads((layout / "blobs" / algo / digest).read_bytes())
    raise SystemExit(f"{ref_name} not in {layout}/index.json")


def unpacked_bytes(archive: Path) -> tuple[int, list[str]]:
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        sizes = {m.name: m.size for m in tar.getmembers()}
    return sum(sizes[layer] for layer in manifest[0]["Layers"]), manifest[0]["RepoTags"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    for flag in ("driver", "storage", "base-ref", "base", "torch", "revision"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()

    images, sizes = {}, {}
    for spec in args.images:
        name, arch, ref, archive, seconds = spec.split("|")
        archive_path = Path(archive)
        tag = ref.rsplit(":", 1)[1]
        manifest = oci_manifest(args.out / "oci", f"{name}-{tag}-{arch}")
        compressed = sum(layer["size"] for layer in manifest["layers"])
        unpacked, repo_tags = unpacked_bytes(archive_path)
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
            "layers": len(manifest["layers"]),
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
    (args.out / "sizes.json").write_text(
        json.dumps({**meta, "units": "bytes; MB = 10^6 bytes", "images": sizes}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
