"""Download each <src-uri> into its <dest-dir> with KServe's storage package (the storage-initializer contract).

usage: entrypoint.py <src-uri> <dest-dir> [<src-uri> <dest-dir> ...]

The KServe controller passes the InferenceService's storageUri and /mnt/models; credentials and the S3
endpoint come from the environment it sets (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
S3_USE_HTTPS, ...), read by kserve_storage itself. Exits 2 on bad arguments, non-zero when a download fails.
"""

import sys

from kserve_storage import Storage, configure_logging, logger


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    configure_logging()
    pairs = list(zip(argv[0::2], argv[1::2], strict=True))
    logger.info("storage-initializer: %s", pairs)
    Storage.download_files([src for src, _ in pairs], [dest for _, dest in pairs])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
