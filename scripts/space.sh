#!/usr/bin/env bash
# space.sh DIR GIB WHAT: one warning line when the file system of DIR has less than GIB GiB
# free (a full disk otherwise shows up later as an install or test error far from its cause).
dir=$1; need=$2; what=$3
while [ ! -d "$dir" ] && [ "$dir" != / ] && [ "$dir" != . ]; do dir=$(dirname "$dir"); done  # it may not exist yet
free_kib=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print $4}')
[ -n "$free_kib" ] || exit 0
if [ "$free_kib" -lt $((need * 1024 * 1024)) ]; then
    echo "warning: $((free_kib / 1024)) MiB free under $dir; $what needs about $need GiB" \
         "(free some space there)" >&2
fi
exit 0
