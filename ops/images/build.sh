#!/usr/bin/env bash
# Builds the two local images of a cluster without any registry or BuildKit:
#   orchestrator-rpa:<version>        the node (`orchestrator`), port 8000, cluster port 7100
#   orchestrator-surrealdb:<version>  the official SurrealDB server built from this workspace
# (each also tagged `latest`). Each root file system is the binary built with the `image` profile
# (release, optimised for size, fat LTO, no symbols: see Cargo.toml), the shared libraries `ldd`
# lists for it, CA certificates and a passwd entry for an unprivileged user (uid 10001), loaded
# with `docker import`; data lives under the volume path /data.
#
#   ops/images/build.sh              # cargo build --profile image, then both images
#   SKIP_BUILD=1 ops/images/build.sh # use the `image` binaries already built
#   BIN_DIR=DIR TAG=T ops/images/build.sh
#                                    # binaries from DIR (no build), tagged T only; the
#                                    # container tests use their debug binaries this way
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${BIN_DIR:-${CARGO_TARGET_DIR:-target}/image}"
if [ -z "${SKIP_BUILD:-}" ] && [ -z "${BIN_DIR:-}" ]; then
  cargo build --profile image -p orchestrator-node -p orchestrator-ops --bin orchestrator --bin surreal
fi
version="${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}"
uid=10001

# rootfs BINARY NAME DIR: the binary as /bin/NAME, its libraries, certificates, users, /data.
rootfs() {
  local bin=$1 name=$2 dir=$3
  mkdir -p "$dir/bin" "$dir/etc/ssl/certs" "$dir/data" "$dir/tmp"
  cp "$bin" "$dir/bin/$name"
  strip "$dir/bin/$name" 2>/dev/null || true
  # Libraries by absolute path: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (...)" and the
  # loader "/lib64/ld-linux-x86-64.so.2 (...)".
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
      mkdir -p "$dir$(dirname "$lib")"
      cp -L "$lib" "$dir$lib"
    done
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\norch:x:%s:%s:orchestrator:/data:/sbin/nologin\n' "$uid" "$uid" > "$dir/etc/passwd"
  printf 'root:x:0:\norch:x:%s:\n' "$uid" > "$dir/etc/group"
  chmod 1777 "$dir/tmp"
}

# import DIR TAG CHANGES...: everything owned by root except /data (the unprivileged user's).
import() {
  local dir=$1 tag=$2
  shift 2
  local changes=()
  for change in "$@"; do changes+=(--change "$change"); done
  tar -C "$dir" --numeric-owner --owner=0 --group=0 --exclude=./data -cf "$dir.tar" .
  tar -C "$dir" --numeric-owner --owner="$uid" --group="$uid" -rf "$dir.tar" ./data
  docker import "${changes[@]}" "$dir.tar" "$tag:$version" >/dev/null
  [ -n "${TAG:-}" ] || docker tag "$tag:$version" "$tag:latest"
  echo "$tag:$version ($(docker image inspect --format '{{.Size}}' "$tag:$version" | awk '{ printf "%.0f MB", $1 / 1000000 }'))"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rootfs "$target/orchestrator" orchestrator "$work/node"
import "$work/node" orchestrator-rpa \
  'ENTRYPOINT ["/bin/orchestrator"]' 'CMD ["serve"]' "USER $uid" 'WORKDIR /data' \
  'ENV ORCH_LISTEN=0.0.0.0:8000' 'ENV ORCH_DB=surrealkv:///data/orchestrator' \
  'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  'EXPOSE 8000' 'EXPOSE 7100' 'VOLUME /data'

rootfs "$target/surreal" surreal "$work/surreal"
import "$work/surreal" orchestrator-surrealdb \
  'ENTRYPOINT ["/bin/surreal"]' 'CMD ["start", "--bind", "0.0.0.0:8000", "surrealkv:///data/db"]' \
  "USER $uid" 'WORKDIR /data' 'EXPOSE 8000' 'VOLUME /data'
