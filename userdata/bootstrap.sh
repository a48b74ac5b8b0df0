#!/usr/bin/env bash
# orthweb-bootstrap: bring an Orthweb host up, idempotently (safe to run any number of times).
#
#   orthweb-bootstrap boot      first boot: packages, Docker + compose, RDS CA, secrets, services
#   orthweb-bootstrap secrets   create-once app/TLS secrets, DB role, runtime secret files
#   orthweb-bootstrap refresh   secrets, then recreate the containers whose secret files changed
#
# Deploy-time values come from $ORTHWEB_ETC/site.env (no secret in it). Secret values are never
# printed, passed as arguments or put in environment variables; they live in Secrets Manager and,
# on the host, only in root-only files under $ORTHWEB_RUN/secrets (tmpfs).
set -euo pipefail
umask 077

ORTHWEB_ETC=${ORTHWEB_ETC:-/etc/orthweb}
ORTHWEB_RUN=${ORTHWEB_RUN:-/run/orthweb}
SECRETS_DIR="$ORTHWEB_RUN/secrets"
# docker compose v2 plugin, pinned by release and SHA-256 (value as pinned and verified by the
# Docker Official Image build of docker:28, docker-library/docker 28/cli/Dockerfile).
COMPOSE_VERSION=v2.38.2
COMPOSE_SHA256=486b3ffc0f806ca2efbc430cef89955386011662f0c76bad17c103d059cfa9cf
COMPOSE_URL="https://github.com/docker/compose/releases/download/$COMPOSE_VERSION/docker-compose-linux-x86_64"
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
# PutSecretValue tokens make "create once" safe when two hosts boot at the same time.
FIRST_VALUE_TOKEN=orthweb-first-value-0000000000000001

log() { printf '%s orthweb-bootstrap: %s\n' "$(date -u +%FT%TZ)" "$*"; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=/dev/null
[ -r "$ORTHWEB_ETC/site.env" ] || die "missing $ORTHWEB_ETC/site.env"
# shellcheck source=/dev/null
. "$ORTHWEB_ETC/site.env"
: "${REGION:?}" "${ADMIN_SECRET_ARN:?}" "${TLS_SECRET_ARN:?}" "${DB_SECRET_ARN:?}" "${DB_HOST:?}" "${DB_PORT:?}"
: "${DB_NAME:?}" "${APP_DB_USER:?}" "${SITE_DNS:?}" "${SITE_IP:?}"
SITE_NAME=${SITE_NAME:-}
BYO_TLS_SECRET=${BYO_TLS_SECRET:-}
# The region's RDS root CAs, written by cloud-init from the bundle pinned in the repository.
RDS_CA_FILE=${RDS_CA_FILE:-$ORTHWEB_ETC/rds-ca.pem}

aws_() {
  # ORTHWEB_AWS_ENDPOINT is set only by the local harness and tests (AWS API emulator on loopback).
  if [ -n "${ORTHWEB_AWS_ENDPOINT:-}" ]; then
    aws --region "$REGION" --endpoint-url "$ORTHWEB_AWS_ENDPOINT" "$@"
  else
    aws --region "$REGION" "$@"
  fi
}

json_get() {  # json_get KEY < json  -> value of a top-level string key
  python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]], end="")' "$1"
}

# read_secret ARN FILE: writes the current value to FILE; returns 3 if the secret has no value yet.
read_secret() {
  local err
  err=$(mktemp)
  if aws_ secretsmanager get-secret-value --secret-id "$1" --query SecretString --output text >"$2" 2>"$err"; then
    rm -f "$err"; return 0
  fi
  if grep -q ResourceNotFoundException "$err"; then rm -f "$err"; return 3; fi
  log "reading secret $1 failed: $(tr -d '\n' <"$err" | cut -c1-300)"; rm -f "$err"; return 1
}

# put_first_value ARN FILE: store FILE as the first value (idempotent token); 0 if stored or already equal.
put_first_value() {
  aws_ secretsmanager put-secret-value --secret-id "$1" --secret-string "file://$2" \
    --client-request-token "$FIRST_VALUE_TOKEN" >/dev/null 2>&1
}

# ensure_secret ARN OUT GENERATOR: OUT gets the secret's value; GENERATOR makes one on first use.
ensure_secret() {
  local arn=$1 out=$2 generator=$3 rc=0
  read_secret "$arn" "$out" || rc=$?
  if [ "$rc" -eq 0 ]; then log "secret $(basename "$arn"): present, unchanged"; return 0; fi
  [ "$rc" -eq 3 ] || die "cannot read secret $arn"
  "$generator" "$out"
  if ! put_first_value "$arn" "$out"; then
    log "secret $(basename "$arn"): another host stored it first; using that value"
  else
    log "secret $(basename "$arn"): created"
  fi
  read_secret "$arn" "$out" || die "cannot read back secret $arn"
}

random_password() { openssl rand -base64 48 | tr -d '/+=\n' | cut -c1-40; }

generate_admin_secret() {
  python3 - "$1" "$APP_DB_USER" "$(random_password)" "$(random_password)" <<'PY'
import json, sys
out, db_user, admin_pw, db_pw = sys.argv[1:]
with open(out, "w") as f:
    json.dump({"username": "admin", "password": admin_pw, "db_username": db_user, "db_password": db_pw}, f)
PY
}

generate_tls_secret() {
  local dir; dir=$(mktemp -d)
  local sans="DNS:$SITE_DNS,IP:$SITE_IP"
  [ -n "$SITE_NAME" ] && sans="$sans,DNS:$SITE_NAME"
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days 3650 -subj "/O=Orthweb/CN=Orthweb site CA $SITE_DNS" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/O=Orthweb/CN=$SITE_DNS" \
    -keyout "$dir/site.key" -out "$dir/site.csr" 2>/dev/null
  # 825 days and serverAuth: the limits macOS and iOS enforce for TLS server certificates.
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
    "$sans" >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/site.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 825 \
    -sha256 -extfile "$dir/ext.cnf" -out "$dir/site.crt" 2>/dev/null
  python3 - "$1" "$dir" <<'PY'
import json, pathlib, sys
out, d = sys.argv[1], pathlib.Path(sys.argv[2])
read = lambda name: (d / name).read_text()
json.dump({"ca_cert": read("ca.crt"), "ca_key": read("ca.key"), "cert": read("site.crt") + read("ca.crt"),
           "key": read("site.key")}, open(out, "w"))
PY
  rm -rf "$dir"
  log "generated a site CA and server certificate for $sans (825 days)"
}

# install_file SRC DEST: replace DEST only when its content differs; prints "changed" when replaced.
install_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then rm -f "$1"; return 0; fi
  mv -f "$1" "$2"; chmod 600 "$2"; echo changed
}

ensure_db_role() {  # the app role Orthanc uses; the RDS master credentials serve only to create it
  local admin=$1 master pgpass
  master=$(mktemp); pgpass=$(mktemp)
  read_secret "$DB_SECRET_ARN" "$master" || die "cannot read the database master secret"
  local tls="sslmode=verify-full sslrootcert=$RDS_CA_FILE"
  local db_pw; db_pw=$(json_get db_password <"$admin")
  printf '*:*:*:%s:%s\n' "$APP_DB_USER" "$db_pw" >"$pgpass"
  if PGPASSFILE=$pgpass psql -X -q -t -c 'select 1' \
      "host=$DB_HOST port=$DB_PORT dbname=$DB_NAME user=$APP_DB_USER $tls connect_timeout=10" >/dev/null 2>&1; then
    log "database role $APP_DB_USER: present, unchanged"
  else
    local master_user; master_user=$(json_get username <"$master")
    printf '*:*:*:%s:%s\n' "$master_user" "$(json_get password <"$master")" >"$pgpass"
    python3 - "$APP_DB_USER" "$db_pw" "$DB_NAME" "$master_user" <<'PY' | \
      PGPASSFILE=$pgpass psql -X -q -v ON_ERROR_STOP=1 \
        "host=$DB_HOST port=$DB_PORT dbname=$DB_NAME user=$master_user $tls connect_timeout=10" >/dev/null
import sys
role, pw, db, master = sys.argv[1:]
quote = lambda s: "'" + s.replace("'", "''") + "'"
print(f"""
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {quote(role)}) THEN CREATE ROLE "{role}" LOGIN; END IF;
END $do$;
ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {quote(pw)};
GRANT "{role}" TO "{master}";
ALTER DATABASE "{db}" OWNER TO "{role}";
ALTER SCHEMA public OWNER TO "{role}";
""")
PY
    log "database role $APP_DB_USER: created or password reset (owner of database $DB_NAME)"
  fi
  rm -f "$master" "$pgpass"
}

write_runtime_secrets() {  # prints the names of the files that changed
  local admin=$1 tls=$2 tmp
  mkdir -p "$SECRETS_DIR"; chmod 700 "$SECRETS_DIR"
  tmp=$(mktemp -p "$SECRETS_DIR")
  python3 - "$admin" "$APP_DB_USER" "$DB_HOST" "$DB_PORT" "$DB_NAME" "$RDS_CA_CONTAINER_PATH" >"$tmp" <<'PY'
import json, sys, urllib.parse as u
admin, user, host, port, db, ca = sys.argv[1:]
pw = json.load(open(admin))["db_password"]
print(f"postgresql://{u.quote(user, safe='')}:{u.quote(pw, safe='')}@{host}:{port}/{db}"
      f"?sslmode=verify-full&sslrootcert={u.quote(ca)}", end="")
PY
  [ -n "$(install_file "$tmp" "$SECRETS_DIR/db-connection-uri")" ] && echo db-connection-uri
  tmp=$(mktemp -p "$SECRETS_DIR")
  python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); print(json.dumps({a["username"]: a["password"]}), end="")' \
    "$admin" >"$tmp"
  [ -n "$(install_file "$tmp" "$SECRETS_DIR/registered-users")" ] && echo registered-users
  tmp=$(mktemp -p "$SECRETS_DIR"); json_get cert <"$tls" >"$tmp"
  [ -n "$(install_file "$tmp" "$SECRETS_DIR/site-cert.pem")" ] && echo site-cert.pem
  tmp=$(mktemp -p "$SECRETS_DIR"); json_get key <"$tls" >"$tmp"
  [ -n "$(install_file "$tmp" "$SECRETS_DIR/site-key.pem")" ] && echo site-key.pem
  tmp=$(mktemp -p "$SECRETS_DIR"); json_get ca_cert <"$tls" >"$tmp" 2>/dev/null || : >"$tmp"
  chmod 644 "$tmp"; mv -f "$tmp" "$ORTHWEB_RUN/site-ca.pem"
  return 0
}

step_secrets() {
  local work; work=$(mktemp -d)
  ensure_secret "$ADMIN_SECRET_ARN" "$work/admin.json" generate_admin_secret
  if [ -n "$BYO_TLS_SECRET" ]; then
    read_secret "$BYO_TLS_SECRET" "$work/tls.json" || die "cannot read your certificate secret $BYO_TLS_SECRET"
    log "using your certificate from $BYO_TLS_SECRET"
  else
    ensure_secret "$TLS_SECRET_ARN" "$work/tls.json" generate_tls_secret
  fi
  ensure_db_role "$work/admin.json"
  write_runtime_secrets "$work/admin.json" "$work/tls.json" >"$work/changed"
  if [ -s "$work/changed" ]; then log "runtime secret files changed: $(tr '\n' ' ' <"$work/changed")"
  else log "runtime secret files: unchanged"; fi
  cp "$work/changed" "$ORTHWEB_RUN/last-changed"
  rm -rf "$work"
}

imds() {  # imds PATH: one IMDSv2 lookup (the token is requested per call; hop limit 2 allows containers)
  local token
  token=$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token) || return 1
  curl -sf -H "X-aws-ec2-metadata-token: $token" "http://169.254.169.254/latest/meta-data/$1"
}

step_network() {  # the host has no public address until Terraform attaches the site's Elastic IP
  local i
  for i in $(seq 1 120); do
    if [ "$(imds public-ipv4 || true)" = "$SITE_IP" ]; then log "Elastic IP $SITE_IP attached"; return 0; fi
    [ "$i" -eq 1 ] && log "waiting for the Elastic IP $SITE_IP"
    sleep 5
  done
  die "the Elastic IP $SITE_IP was not attached within 10 minutes"
}

step_packages() {
  local want=(docker postgresql15 openssl python3)
  local missing=() p
  for p in "${want[@]}"; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"; dnf install -y -q "${missing[@]}"
  else log "packages: present"; fi
  systemctl enable --now docker.service
}

step_compose() {
  if [ -x "$COMPOSE_PLUGIN" ] && echo "$COMPOSE_SHA256  $COMPOSE_PLUGIN" | sha256sum -c --status; then
    log "docker compose $COMPOSE_VERSION: present"; return 0
  fi
  local tmp; tmp=$(mktemp)
  curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 --retry 5 -o "$tmp" "$COMPOSE_URL"
  echo "$COMPOSE_SHA256  $tmp" | sha256sum -c --status || die "docker compose download failed its SHA-256 check"
  install -D -m 0755 "$tmp" "$COMPOSE_PLUGIN"; rm -f "$tmp"
  log "docker compose $COMPOSE_VERSION installed (SHA-256 verified)"
}

step_rds_ca() {
  openssl crl2pkcs7 -nocrl -certfile "$RDS_CA_FILE" | openssl pkcs7 -print_certs -noout >/dev/null 2>&1 \
    || die "$RDS_CA_FILE is not a PEM certificate bundle"
  log "RDS CA certificates: $(grep -c 'BEGIN CERTIFICATE' "$RDS_CA_FILE") present"
}

compose() { docker compose -p orthweb -f "$ORTHWEB_ETC/docker-compose.yml" "$@"; }

step_services() {
  systemctl daemon-reload
  systemctl enable orthweb.service orthweb-refresh.timer
  systemctl start orthweb-refresh.timer
  systemctl restart orthweb.service
  log "services started: orthweb.service, orthweb-refresh.timer"
}

step_refresh() {
  step_secrets
  local changed; changed=$(cat "$ORTHWEB_RUN/last-changed")
  if grep -qE 'db-connection-uri|registered-users' <<<"$changed"; then
    log "credentials changed: recreating orthanc"; compose up -d --force-recreate --no-deps orthanc
  fi
  if grep -qE 'site-(cert|key)' <<<"$changed"; then
    log "certificate changed: recreating nginx"; compose up -d --force-recreate --no-deps nginx
  fi
}

main() {
  mkdir -p "$ORTHWEB_RUN"; chmod 700 "$ORTHWEB_RUN"
  RDS_CA_CONTAINER_PATH=${RDS_CA_CONTAINER_PATH:-/etc/orthweb/rds-ca.pem}
  case "${1:-boot}" in
    boot) step_network; step_packages; step_compose; step_rds_ca; step_secrets; step_services ;;
    secrets) step_secrets ;;
    refresh) step_refresh ;;
    *) die "usage: orthweb-bootstrap [boot|secrets|refresh]" ;;
  esac
  log "done: ${1:-boot}"
}

main "$@"
