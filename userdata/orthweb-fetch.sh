#!/usr/bin/env bash
# orthweb-fetch: get the boot bundle named in site.env from S3, check its SHA-256, unpack it onto
# the host. The bundle is kept under its hash, so a reboot or a retry does not download it again.
set -euo pipefail
umask 022
ORTHWEB_ETC=${ORTHWEB_ETC:-/etc/orthweb}
ORTHWEB_ROOT=${ORTHWEB_ROOT:-/}
BUNDLES=${ORTHWEB_BUNDLES:-/var/lib/orthweb/bundles}
# shellcheck source=/dev/null
. "$ORTHWEB_ETC/site.env"
: "${REGION:?}" "${BUNDLE_BUCKET:?}" "${BUNDLE_OBJECT:?}" "${BUNDLE_SHA256:?}"
log() { printf '%s orthweb-fetch: %s\n' "$(date -u +%FT%TZ)" "$*"; }
bundle="$BUNDLES/$BUNDLE_SHA256.tar.gz"
if [ -f "$bundle" ] && echo "$BUNDLE_SHA256  $bundle" | sha256sum -c --status; then
  log "bundle $BUNDLE_SHA256: present"
else
  mkdir -p "$BUNDLES"; chmod 700 "$BUNDLES"
  tmp=$(mktemp -p "$BUNDLES")
  trap 'rm -f "$tmp"' EXIT
  endpoint=()
  # ORTHWEB_AWS_ENDPOINT is set only by tests (AWS API emulator on loopback).
  [ -z "${ORTHWEB_AWS_ENDPOINT:-}" ] || endpoint=(--endpoint-url "$ORTHWEB_AWS_ENDPOINT")
  aws --region "$REGION" "${endpoint[@]}" s3 cp --only-show-errors "s3://$BUNDLE_BUCKET/$BUNDLE_OBJECT" "$tmp"
  if ! echo "$BUNDLE_SHA256  $tmp" | sha256sum -c --status; then
    log "ERROR: s3://$BUNDLE_BUCKET/$BUNDLE_OBJECT does not have the SHA-256 the user data names"; exit 1
  fi
  mv -f "$tmp" "$bundle"
  log "bundle $BUNDLE_SHA256: fetched and verified"
fi
tar --no-same-owner -xzf "$bundle" -C "$ORTHWEB_ROOT"
log "bundle $BUNDLE_SHA256: unpacked"
