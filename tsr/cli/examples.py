"""The examples at the end of every command's and group's --help (tests/tsr/test_cli_operator.py checks
that none is missing), kept together here so that the command functions stay readable. `\b` keeps click
from rewrapping the lines."""

from __future__ import annotations

import typer

EXAMPLES: dict[str, list[str]] = {
    "": [
        "tsr demo --epochs 4 --max-groups-per-class 10 --min-accuracy 0.5 --min-class-accuracy 0  # quick end to end",
        "tsr models list",
        "tsr predict sign.png --url http://127.0.0.1:8080",
    ],
    "store": [
        'eval "$(tsr store start)"',
        "tsr store upload gtsrb-train-32.tar.gz s3://datasets/gtsrb",
        "tsr store stop",
    ],
    "store upload": [
        "tsr store upload gtsrb-train-32.tar.gz s3://datasets/gtsrb   # extracts, then uploads every file",
        "tsr store upload ./my-imagefolder s3://datasets/signs --workers 16 --json",
        "# into a cluster's MinIO: kubectl -n tsr port-forward svc/tsr-platform-minio 9000 &, then export",
        "# TSR_S3_ENDPOINT=127.0.0.1:9000 TSR_S3_ACCESS_KEY=... TSR_S3_SECRET_KEY=... (helm NOTES show how)",
    ],
    "store start": ['eval "$(tsr store start)"   # start the embedded MinIO, export TSR_S3_* in this shell'],
    "store stop": ["tsr store stop"],
    "prometheus": ["tsr prometheus stop"],
    "prometheus stop": ["tsr prometheus stop"],
    "ingest": [
        "tsr ingest --source .state/data --out /tmp/gtsrb-ds",
        "tsr ingest --source s3://datasets/gtsrb --out /tmp/ds --max-groups-per-class 5 --json",
        "tsr ingest --source ./my-signs --layout imagefolder --out /tmp/ds --skip-corrupt",
    ],
    "evaluate": [
        "tsr evaluate --model champion --data /data/GTSRB-root --split test",
        "tsr evaluate --model s3://models/gtsrb-classifier/<version> --data /data/GTSRB-root --table --per-class",
        "tsr evaluate --model ./model-dir --data s3://datasets/gtsrb-test --json | jq .accuracy",
    ],
    "serve": [
        "tsr serve --model champion --http-port 8080",
        "tsr serve --model ./model-dir --grpc-port 8081 --batch-size 32 --reload-interval 60",
        "tsr serve --model champion --feedback-uri s3://feedback/gtsrb-classifier --feedback-sample-rate 0.05 "
        "--feedback-max-per-minute 600 --feedback-retention-days 14",
    ],
    "predict": [
        "tsr predict stop.png yield.ppm",
        "tsr predict signs/*.png --url http://127.0.0.1:8080 --model gtsrb-classifier --top-k 3",
        "tsr predict sign.jpg --protocol v2 --json | jq '.predictions[0].class_name'",
    ],
    "backend": ["tsr backend | jq .mkldnn_available"],
    "pipeline": [
        "tsr pipeline run-local --data .state/data --epochs 4 --max-groups-per-class 10 --min-accuracy 0.5 "
        "--min-class-accuracy 0",
        "tsr pipeline compile --image ghcr.io/you/tsr-components:0.1.0",
    ],
    "pipeline compile": [
        "tsr pipeline compile",
        "tsr pipeline compile --image ghcr.io/you/tsr-components:0.1.0 --train-arch arm64 "
        "--toleration arch=arm64:NoSchedule",
    ],
    "pipeline run-local": [
        "tsr pipeline run-local --data .state/data --epochs 4 --max-groups-per-class 10 --min-accuracy 0.5 "
        "--min-class-accuracy 0",
        "tsr pipeline run-local --data s3://datasets/gtsrb --deploy-mode none --json | jq .gate",
    ],
    "pipeline submit": [
        "KFP_TOKEN=... tsr pipeline submit --host https://kubeflow.example/pipeline --namespace tsr "
        "--param data_source=s3://datasets/gtsrb",
    ],
    "pipeline schedule": [
        'tsr pipeline schedule --cron "0 3 * * 0" --host https://kubeflow.example/pipeline '
        "--param data_source=s3://datasets/gtsrb",
    ],
    "deploy": [
        "tsr deploy s3://models/gtsrb-classifier/<version> --namespace tsr",
        "tsr deploy champion --deployment-mode Knative --canary-percent 10",
    ],
    "promote": ["tsr promote gtsrb-classifier --namespace tsr"],
    "rollback": ["tsr rollback", "tsr rollback --to-version <version> --move-champion"],
    "models": ["tsr models list", "tsr models show champion"],
    "models list": ["tsr models list", "tsr models list --json | jq '.[] | select(.champion) | .version'"],
    "models show": [
        "tsr models show",
        "tsr models show <version>",
        "tsr models show latest --json | jq .metrics.validation",
    ],
    "retrain-webhook": [
        "tsr retrain-webhook --kfp-host http://localhost:8888 --param data_source=s3://datasets/gtsrb",
        "tsr retrain-webhook --host 0.0.0.0 --kfp-in-cluster --params-file /etc/tsr-retrain/params.json",
    ],
    "loop": [
        "tsr loop --once --data .state/data",
        "tsr loop --once --quick --data .state/data --epochs 6 --max-groups-per-class 10 --json",
    ],
    "demo": [
        "tsr demo",
        "tsr demo --epochs 4 --max-groups-per-class 10 --batch-size 128 --min-accuracy 0.5 --min-class-accuracy 0",
        "tsr demo --data-dir /data/GTSRB-root --json > demo-summary.json",
    ],
}


def epilog(path: str) -> str | None:
    """The epilog for `tsr <path>`; None for a command without examples (tests/tsr/test_cli_operator.py fails)."""
    lines = EXAMPLES.get(path)
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None


def add_examples(group: typer.Typer, prefix: str) -> None:
    """Set EXAMPLES as the help epilog of every command and sub-group of `group` (recursively).

    Call it once every command is registered: it sets the epilogs of the commands registered so far.
    """
    for command in group.registered_commands:
        name = command.name or (command.callback.__name__.lower().replace("_", "-") if command.callback else "")
        command.epilog = epilog(f"{prefix}{name}")
    for sub in group.registered_groups:
        if sub.typer_instance is None or not isinstance(sub.name, str):
            continue
        sub.typer_instance.info.epilog = epilog(f"{prefix}{sub.name}")
        add_examples(sub.typer_instance, f"{prefix}{sub.name} ")
