#!/usr/bin/env bash
# Usage: disk-free.sh DIR GB WHAT
# Fails in one line when the filesystem holding DIR (or its closest existing parent) has less than GB gigabytes
# free, so that a cold build stops before it starts instead of dying half-way with "no space left on device"
# (what CI hit once: the Kubernetes build on a disk with 9 GB free after the venv). The amounts the Makefile asks
# for are the sizes measured here on a cold build, rounded up (docs/testing.md).
set -euo pipefail
dir=$1 need=$2 what=$3
while [ ! -e "$dir" ]; do dir=$(dirname "$dir"); done
free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
free_gb=$(( free_kb / 1024 / 1024 ))
if [ "$free_gb" -lt "$need" ]; then
  echo "error: $what needs about $need GB free on the filesystem of $dir; it has $free_gb GB (free space, then rerun)" >&2
  exit 1
fi
