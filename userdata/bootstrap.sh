#!/usr/bin/env bash
# orthweb-bootstrap: bring an Orthweb host up, idempotently (safe to run any number of times).
#
#   orthweb-bootstrap boot      every boot (orthweb-boot.service retries it with backoff): Elastic IP,
#                               packages, Docker + compose, RDS CA, secrets, services
#   orthweb-bootstrap secrets   create-once secrets and certificates, DB role, Orthanc's credentials,
#                               runtime files (orthweb.service runs it before compose)
#   orthweb-bootstrap refresh   secrets (certificate renewed when due), then recreate or reload what
#                               changed (orthweb-refresh.timer, every 5 minutes)
#
# Deploy-time values come from $ORTHWEB_ETC/site.env (no secret in it). Secret values are never
# printed, passed as command arguments or put in environment variables: they live in Secrets
# Manager and, on the host, only in root-only files on tmpfs ($ORTHWEB_RUN). Every temporary file
# of a run lives in one folder under $ORTHWEB_RUN that is removed on every exit path.
set -euo pipefail
umask 077

ORTHWEB_ETC=${ORTHWEB_ETC:-/etc/orthweb}
ORTHWEB_RUN=${ORTHWEB_RUN:-/run/orthweb}
SECRETS_DIR="$ORTHWEB_RUN/secrets"   # Orthanc's secret files (compose secrets)
NGINX_DIR="$ORTHWEB_RUN/nginx"       # nginx's certificate, key, client CA and CRL (a mounted folder)
AWS_DIR="$ORTHWEB_RUN/aws"           # Orthanc's short-lived AWS credentials (a mounted folder)
# docker compose v2 plugin, pinned by release and SHA-256 (value as pinned and verified by the
# Docker Official Image build of docker:28, docker-library/docker 28/cli/Dockerfile).
COMPOSE_VERSION=v2.38.2
COMPOSE_SHA256=486b3ffc0f806ca2efbc430cef89955386011662f0c76bad17c103d059cfa9cf
COMPOSE_URL="https://github.com/docker/compose/releases/download/$COMPOSE_VERSION/docker-compose-linux-x86_64"
COMPOSE_PLUGIN=/usr/local/lib/docker/cli-plugins/docker-compose
# The first value of a create-once secret is stored with a fixed request token: when hosts boot
# together, one write wins and the others get ResourceExistsException and read the winner's value.
FIRST_VALUE_TOKEN=orthweb-first-value-0000000000000001
CA_DAYS=1826              # the site CA: 5 years; the refresh warns in its last 180 days
SERVER_DAYS=825           # the longest lifetime macOS and iOS accept for a TLS server certificate
RENEW_DAYS=${ORTHWEB_RENEW_DAYS:-90}   # renew the server certificate this long before it expires
CREDENTIAL_SECONDS=3600   # Orthanc's role credentials; renewed at every run (every 5 minutes)

# The log goes to the run's standard output as it was at start (fd 3), even from inside functions
# whose output is captured.
exec 3>&1
log() { printf '%s orthweb-bootstrap: %s\n' "$(date -u +%FT%TZ)" "$*" >&3; }
die() { log "ERROR: $*"; exit 1; }

[ -r "$ORTHWEB_ETC/site.env" ] || die "missing $ORTHWEB_ETC/site.env"
# shellcheck source=/dev/null
. "$ORTHWEB_ETC/site.env"
: "${REGION:?}" "${ADMIN_SECRET_ARN:?}" "${TLS_SECRET_ARN:?}" "${CA_SECRET_ARN:?}" "${DB_SECRET_ARN:?}"
: "${DB_HOST:?}" "${DB_PORT:?}" "${DB_NAME:?}" "${APP_DB_USER:?}" "${SITE_DNS:?}" "${SITE_IP:?}"
: "${ORTHANC_ROLE_ARN:?}" "${BUCKET:?}" "${ADMIN_USER:?}"
SITE_NAME=${SITE_NAME:-}
BYO_TLS_SECRET=${BYO_TLS_SECRET:-}
DICOM_CLIENT_AUTH=${DICOM_CLIENT_AUTH:-none}
SITE_MODE=${SITE_MODE:-single}
CLIENTS_SECRET_ARN=${CLIENTS_SECRET_ARN:-}
RDS_CA_FILE=${RDS_CA_FILE:-$ORTHWEB_ETC/rds-ca.pem}
RDS_CA_CONTAINER_PATH=${RDS_CA_CONTAINER_PATH:-/etc/orthweb/rds-ca.pem}

# One run at a time (the timer may fire while the boot unit runs); scratch space on tmpfs, removed
# on every exit path, including failures and signals.
mkdir -p "$ORTHWEB_RUN"; chmod 700 "$ORTHWEB_RUN"
exec 9>"$ORTHWEB_RUN/lock"
flock 9
rm -rf "$ORTHWEB_RUN"/work.*   # left by a run that was killed; we hold the lock, so none is live
WORK=$(mktemp -d "$ORTHWEB_RUN/work.XXXXXX")
export TMPDIR="$WORK"
trap 'rm -rf "$WORK"' EXIT
trap 'exit 143' TERM INT

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

first_line() { tr -d '\r' <"$1" | grep -v '^$' | head -n 1 | cut -c1-300; }

# SECRET_VERSION: the version id of the value read_secret or put_value last left in its FILE (read
# or stored in the same call as the value), "none" when there was no value.
# read_secret ARN FILE: the current value into FILE; 0 ok, 3 no value yet, 1 any other failure.
SECRET_VERSION=none
read_secret() {
  local err="$WORK/read.err" raw="$WORK/read.json" rc=0
  SECRET_VERSION=none
  aws_ secretsmanager get-secret-value --secret-id "$1" --query '{v:VersionId,s:SecretString}' --output json \
    >"$raw" 2>"$err" || rc=$?
  if [ "$rc" -eq 0 ]; then
    SECRET_VERSION=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); open(sys.argv[2], "w").write(d["s"] + "\n"); print(d["v"])' "$raw" "$2")
    rm -f "$raw"
    return 0
  fi
  rm -f "$raw"
  if grep -q ResourceNotFoundException "$err"; then return 3; fi
  log "reading secret $(basename "$1") failed: $(first_line "$err")"
  return 1
}

# put_value ARN FILE TOKEN: store FILE as a new version; 0 stored (or the same value was already
# stored with TOKEN), 4 another host stored a different value with TOKEN first, 1 a real error
# (access denied, KMS, throttling, ...): never taken for "someone else stored it".
put_value() {
  local err="$WORK/put.err" version
  if version=$(aws_ secretsmanager put-secret-value --secret-id "$1" --secret-string "file://$2" \
      --client-request-token "$3" --query VersionId --output text 2>"$err"); then
    SECRET_VERSION=$version
    return 0
  fi
  if grep -q ResourceExistsException "$err"; then return 4; fi
  log "storing secret $(basename "$1") failed: $(first_line "$err")"
  return 1
}

# ensure_secret ARN OUT GENERATOR: OUT gets the secret's value; GENERATOR makes one on first use.
ensure_secret() {
  local arn=$1 out=$2 generator=$3 rc=0
  read_secret "$arn" "$out" || rc=$?
  if [ "$rc" -eq 0 ]; then log "secret $(basename "$arn"): present, unchanged"; return 0; fi
  [ "$rc" -eq 3 ] || die "cannot read secret $(basename "$arn")"
  "$generator" "$out"
  store_value "$arn" "$out" "$FIRST_VALUE_TOKEN" "created" "stored it"
}

# store_value ARN OUT TOKEN DONE RACED: store OUT as the secret's new value (put_value). OUT then holds
# the stored value: this host's (logged as DONE) or, when another host stored one first with TOKEN,
# that one, read back (logged as "another host RACED first").
store_value() {
  local arn=$1 out=$2 rc=0
  put_value "$arn" "$out" "$3" || rc=$?
  case "$rc" in
    0) log "secret $(basename "$arn"): $4" ;;
    4) log "secret $(basename "$arn"): another host $5 first; using that value"
       read_secret "$arn" "$out" || die "cannot read back secret $(basename "$arn")" ;;
    *) die "cannot store secret $(basename "$arn")" ;;
  esac
}

# Passwords are made inside Python from the OS's random source: they never appear in an argument.
generate_admin_secret() {
  python3 - "$1" "$ADMIN_USER" "$APP_DB_USER" <<'PY'
import json, secrets, sys
out, admin_user, db_user = sys.argv[1:]
with open(out, "w") as f:
    json.dump({"username": admin_user, "password": secrets.token_urlsafe(30), "db_username": db_user,
               "db_password": secrets.token_urlsafe(30)}, f)
PY
}

# -- the site's names, CA and server certificate ------------------------------------------------

site_names() {  # one SAN per line: the site's DNS name and address, site_name, any extra names
  printf 'DNS:%s\nIP:%s\n' "$SITE_DNS" "$SITE_IP"
  [ -z "$SITE_NAME" ] || printf 'DNS:%s\n' "$SITE_NAME"
  local extra
  for extra in ${SITE_EXTRA_NAMES:-}; do printf '%s\n' "$extra"; done
}

tokenize() { sha256sum | cut -c1-32; }   # a client request token derived from what both hosts see

# generate_ca OUT: a CA that can vouch for this site's names only (critical name constraints).
generate_ca() {
  local out=$1 constraints="" san
  while read -r san; do
    case "$san" in
      IP:*) constraints="$constraints,permitted;IP:${san#IP:}/255.255.255.255" ;;
      *) constraints="$constraints,permitted;$san" ;;
    esac
  done < <(site_names)
  openssl req -x509 -newkey rsa:3072 -nodes -sha256 -days "$CA_DAYS" \
    -subj "/O=Orthweb/CN=Orthweb site CA $SITE_DNS" -keyout "$WORK/ca.key" -out "$WORK/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "nameConstraints=critical${constraints}" 2>/dev/null
  python3 - "$out" "$WORK" <<'PY'
import json, pathlib, sys
out, d = sys.argv[1], pathlib.Path(sys.argv[2])
json.dump({"ca_cert": (d / "ca.crt").read_text(), "ca_key": (d / "ca.key").read_text()}, open(out, "w"))
PY
  rm -f "$WORK/ca.key" "$WORK/ca.crt"
  log "generated a site CA limited to $(site_names | paste -sd, -) ($CA_DAYS days)"
}

# generate_server_cert CA_JSON OUT: a server certificate for the site's names, issued by the CA.
generate_server_cert() {
  local ca=$1 out=$2 sans
  sans=$(site_names | paste -sd, -)
  json_get ca_cert <"$ca" >"$WORK/ca.crt"
  json_get ca_key <"$ca" >"$WORK/ca.key"
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "/O=Orthweb/CN=$SITE_DNS" \
    -keyout "$WORK/site.key" -out "$WORK/site.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
    "$sans" >"$WORK/ext.cnf"
  openssl x509 -req -in "$WORK/site.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days "$SERVER_DAYS" -sha256 -extfile "$WORK/ext.cnf" -out "$WORK/site.crt" 2>/dev/null
  python3 - "$out" "$WORK" <<'PY'
import json, pathlib, sys
out, d = sys.argv[1], pathlib.Path(sys.argv[2])
read = lambda name: (d / name).read_text()
json.dump({"cert": read("site.crt") + read("ca.crt"), "key": read("site.key"), "ca_cert": read("ca.crt")},
          open(out, "w"))
PY
  rm -f "$WORK/ca.key" "$WORK/site.key" "$WORK/site.csr"
  log "issued a server certificate for $sans ($SERVER_DAYS days)"
}

ca_covers_names() {  # ca_covers_names CA_JSON: 0 if the CA's name constraints permit every site name
  local names
  names=$(site_names | sort | paste -sd, -)
  json_get ca_cert <"$1" | openssl x509 -noout -ext nameConstraints 2>/dev/null \
    | python3 -c '
import re, sys
permitted = {re.sub(r"/255\.255\.255\.255$", "", p) for p in re.findall(r"^\s*((?:DNS|IP):\S+)$", sys.stdin.read(), re.M)}
names = set(sys.argv[1].split(","))
sys.exit(0 if names <= permitted else 1)' "$names"
}

server_cert_current() {  # server_cert_current TLS_JSON CA_JSON: 0 if issued by the CA, for today's names, not due
  local tls=$1 ca=$2 have want
  json_get cert <"$tls" | openssl x509 -out "$WORK/current.crt" 2>/dev/null || return 1
  json_get ca_cert <"$ca" >"$WORK/ca.crt"
  openssl verify -CAfile "$WORK/ca.crt" "$WORK/current.crt" >/dev/null 2>&1 || return 1
  openssl x509 -in "$WORK/current.crt" -checkend $((RENEW_DAYS * 86400)) -noout >/dev/null || return 1
  have=$(openssl x509 -in "$WORK/current.crt" -noout -ext subjectAltName | tail -n +2 | tr -d ' ' \
    | tr ',' '\n' | sed 's/^IPAddress:/IP:/' | sort | paste -sd, -)
  want=$(site_names | sort | paste -sd, -)
  [ "$have" = "$want" ]
}

# replace_secret ARN OUT REASON TOKEN_SEED GENERATOR [ARGS]: store a new value unless another host
# already replaced the same version (same token); OUT then holds the value that won.
replace_secret() {
  local arn=$1 out=$2 reason=$3 seed=$4; shift 4
  "$@" "$out"
  store_value "$arn" "$out" "orthweb-$(printf '%s' "$seed" | tokenize)" "replaced ($reason)" "replaced it"
}

ensure_site_certificate() {  # OUT: the site-tls value (server chain, key, CA certificate)
  local out=$1 ca="$WORK/ca.json" names
  names=$(site_names | sort | paste -sd, -)
  # A replacement's token names the version whose value this host judged (SECRET_VERSION, read with
  # the value): hosts that read the same version agree on one replacement, and a host that read an
  # older value than another host stored makes the same request as that host did, which Secrets
  # Manager refuses as a repeat with another value (it then reads the stored one).
  ensure_secret "$CA_SECRET_ARN" "$ca" generate_ca
  if ! ca_covers_names "$ca"; then
    log "WARNING: the site names ($names) are beyond the site CA's name constraints: a new site CA; clients must trust it"
    replace_secret "$CA_SECRET_ARN" "$ca" "new names" "ca $SECRET_VERSION $names" generate_ca
  fi
  if ! json_get ca_cert <"$ca" | openssl x509 -checkend $((180 * 86400)) -noout >/dev/null; then
    log "WARNING: the site CA expires within 180 days; plan a new CA (README: Trust the site CA)"
  fi
  local rc=0
  read_secret "$TLS_SECRET_ARN" "$out" || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || die "cannot read secret $(basename "$TLS_SECRET_ARN")"
  if [ "$rc" -eq 0 ] && server_cert_current "$out" "$ca"; then
    log "server certificate: current (names $names)"
  else
    replace_secret "$TLS_SECRET_ARN" "$out" "names, issuer or expiry" "tls $SECRET_VERSION $names" generate_server_cert "$ca"
  fi
  rm -f "$ca"
}

# -- the database role ------------------------------------------------------------------------

ensure_db_role() {  # the app role Orthanc uses; the RDS master credentials serve only to create or repair it
  local admin=$1 tls="sslmode=verify-full sslrootcert=$RDS_CA_FILE" pgpass="$WORK/pgpass"
  python3 - "$admin" "$APP_DB_USER" >"$pgpass" <<'PY'
import json, sys
print(f"*:*:*:{sys.argv[2]}:{json.load(open(sys.argv[1]))['db_password']}")
PY
  if PGPASSFILE=$pgpass psql -X -q -t -c 'select 1' \
      "host=$DB_HOST port=$DB_PORT dbname=$DB_NAME user=$APP_DB_USER $tls connect_timeout=10" >/dev/null 2>&1; then
    log "database role $APP_DB_USER: present, unchanged"
    return 0
  fi
  # Only now is the master secret needed.
  local master="$WORK/master.json" master_user
  read_secret "$DB_SECRET_ARN" "$master" || die "cannot read the database master secret"
  master_user=$(json_get username <"$master")
  python3 - "$master" >"$pgpass" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"*:*:*:{m['username']}:{m['password']}")
PY
  python3 - "$admin" "$APP_DB_USER" "$DB_NAME" "$master_user" <<'PY' | \
    PGPASSFILE=$pgpass psql -X -q -v ON_ERROR_STOP=1 \
      "host=$DB_HOST port=$DB_PORT dbname=$DB_NAME user=$master_user $tls connect_timeout=10" >/dev/null \
    || die "cannot create the database role $APP_DB_USER (database $DB_HOST:$DB_PORT)"
import json, sys
admin, role, db, master = sys.argv[1:]
pw = json.load(open(admin))["db_password"]
quote = lambda s: "'" + s.replace("'", "''") + "'"
# One host at a time (hosts booting together): the second finds the role the first committed.
print(f"""
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('orthweb: database role {role}'));
DO $do$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {quote(role)}) THEN CREATE ROLE "{role}" LOGIN; END IF;
END $do$;
ALTER ROLE "{role}" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {quote(pw)};
GRANT "{role}" TO "{master}";
ALTER DATABASE "{db}" OWNER TO "{role}";
ALTER SCHEMA public OWNER TO "{role}";
COMMIT;
""")
PY
  rm -f "$master" "$pgpass"
  log "database role $APP_DB_USER: created or password reset (owner of database $DB_NAME)"
}

# -- Orthanc's AWS credentials ------------------------------------------------------------------

write_orthanc_credentials() {  # short-lived credentials of Orthanc's own role, in a mounted folder
  local creds="$WORK/assumed.json"
  aws_ sts assume-role --role-arn "$ORTHANC_ROLE_ARN" --role-session-name "orthanc-$(hostname -s | cut -c1-40)" \
    --duration-seconds "$CREDENTIAL_SECONDS" --output json >"$creds" 2>"$WORK/sts.err" \
    || die "cannot assume Orthanc's role: $(first_line "$WORK/sts.err")"
  mkdir -p "$AWS_DIR"; chmod 700 "$AWS_DIR"
  # Renamed into place: the SDK in the container re-reads the file every 5 minutes and never sees half of it.
  python3 - "$creds" >"$AWS_DIR/.credentials.new" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["Credentials"]
print(f"[default]\naws_access_key_id = {c['AccessKeyId']}\naws_secret_access_key = {c['SecretAccessKey']}\n"
      f"aws_session_token = {c['SessionToken']}")
PY
  chmod 600 "$AWS_DIR/.credentials.new"
  mv -f "$AWS_DIR/.credentials.new" "$AWS_DIR/credentials"
  rm -f "$creds"
  log "Orthanc's role credentials: renewed (valid ${CREDENTIAL_SECONDS}s)"
}

# -- runtime files ------------------------------------------------------------------------------

# install_file SRC DEST: replace DEST (atomically) only when its content differs; prints "changed".
install_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then rm -f "$1"; return 0; fi
  chmod 600 "$1"; mv -f "$1" "$2"; echo changed
}

client_trust_files() {  # the DICOM client CA and CRL nginx checks client certificates against
  local clients="$WORK/clients.json" rc=3
  if [ -n "$CLIENTS_SECRET_ARN" ]; then
    rc=0; read_secret "$CLIENTS_SECRET_ARN" "$clients" || rc=$?
  fi
  if [ "$rc" -eq 0 ]; then
    # CA and CRL from the same secret version: a CRL from another CA makes nginx refuse everyone.
    json_get ca_cert <"$clients" >"$1"; json_get crl <"$clients" >"$2"
    openssl crl -in "$2" -CAfile "$1" -noout >/dev/null 2>&1 \
      || die "the DICOM client CA and CRL in $(basename "$CLIENTS_SECRET_ARN") do not match; nginx keeps the previous ones"
    local next_update
    next_update=$(openssl crl -in "$2" -noout -nextupdate 2>/dev/null | cut -d= -f2)
    if [ -z "$next_update" ] || [ "$(date -d "$next_update" +%s)" -lt $(( $(date +%s) + 180 * 86400 )) ]; then
      log "WARNING: the DICOM client CRL expires within 180 days: re-sign it (make modality-cert ... revoke/issue)"
    fi
    return 0
  fi
  [ "$rc" -eq 3 ] || die "cannot read the DICOM client certificates"
  # No client CA yet (no certificate issued): trust an anchor nobody holds the key of, so nginx
  # starts and refuses every client until an operator issues the first certificate. Made once and
  # kept, so the refresh does not reload nginx for a new placeholder every time.
  if [ -r "$NGINX_DIR/client-ca.pem" ] && openssl x509 -in "$NGINX_DIR/client-ca.pem" -noout -subject 2>/dev/null \
      | grep -q "no DICOM client certificate issued yet"; then
    cp "$NGINX_DIR/client-ca.pem" "$1"; cp "$NGINX_DIR/client-crl.pem" "$2"
    return 0
  fi
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Orthweb: no DICOM client certificate issued yet" \
    -keyout "$WORK/nobody.key" -out "$1" 2>/dev/null
  printf '' >"$WORK/index.txt"
  printf '[ca]\ndefault_ca=x\n[x]\ndatabase=%s\ndefault_md=sha256\ndefault_crl_days=3650\n' "$WORK/index.txt" >"$WORK/ca.cnf"
  openssl ca -gencrl -config "$WORK/ca.cnf" -keyfile "$WORK/nobody.key" -cert "$1" -out "$2" 2>/dev/null
  rm -f "$WORK/nobody.key"
}

write_runtime_files() {  # prints the names of the files that changed
  local admin=$1 tls=$2 tmp
  mkdir -p "$SECRETS_DIR" "$NGINX_DIR"; chmod 700 "$SECRETS_DIR" "$NGINX_DIR"
  tmp=$(mktemp)
  python3 - "$admin" "$APP_DB_USER" "$DB_HOST" "$DB_PORT" "$DB_NAME" "$RDS_CA_CONTAINER_PATH" >"$tmp" <<'PY'
import json, sys, urllib.parse as u
admin, user, host, port, db, ca = sys.argv[1:]
pw = json.load(open(admin))["db_password"]
print(f"postgresql://{u.quote(user, safe='')}:{u.quote(pw, safe='')}@{host}:{port}/{db}"
      f"?sslmode=verify-full&sslrootcert={u.quote(ca)}", end="")
PY
  [ -z "$(install_file "$tmp" "$SECRETS_DIR/db-connection-uri")" ] || echo db-connection-uri
  tmp=$(mktemp)
  python3 -c 'import json,sys; a=json.load(open(sys.argv[1])); print(json.dumps({a["username"]: a["password"]}), end="")' \
    "$admin" >"$tmp"
  [ -z "$(install_file "$tmp" "$SECRETS_DIR/registered-users")" ] || echo registered-users
  tmp=$(mktemp); json_get cert <"$tls" >"$tmp"
  [ -z "$(install_file "$tmp" "$NGINX_DIR/site-cert.pem")" ] || echo site-cert.pem
  tmp=$(mktemp); json_get key <"$tls" >"$tmp"
  [ -z "$(install_file "$tmp" "$NGINX_DIR/site-key.pem")" ] || echo site-key.pem
  if [ "$DICOM_CLIENT_AUTH" = certificate ]; then
    local ca crl; ca=$(mktemp); crl=$(mktemp)
    client_trust_files "$ca" "$crl"
    [ -z "$(install_file "$ca" "$NGINX_DIR/client-ca.pem")" ] || echo client-ca.pem
    [ -z "$(install_file "$crl" "$NGINX_DIR/client-crl.pem")" ] || echo client-crl.pem
  fi
  tmp=$(mktemp); json_get ca_cert <"$tls" >"$tmp" 2>/dev/null || : >"$tmp"
  chmod 644 "$tmp"; mv -f "$tmp" "$ORTHWEB_RUN/site-ca.pem"
  return 0
}

write_orthanc_config() {  # the bundle's orthanc.json with this deployment's bucket and region
  local server=""
  # Several servers share the index: each is named (its instance id) in the database's records.
  [ "$SITE_MODE" != scaled ] || server=$(imds instance-id 2>/dev/null || hostname -s)
  python3 - "$ORTHWEB_ETC/orthanc.template.json" "$BUCKET" "$REGION" "$server" >"$WORK/orthanc.json" <<'PY'
import json, sys
template, bucket, region, server = sys.argv[1:]
config = json.load(open(template))
config["AwsS3Storage"].update({"BucketName": bucket, "Region": region})
if server:
    config["DatabaseServerIdentifier"] = server
print(json.dumps(config, indent=2))
PY
  chmod 644 "$WORK/orthanc.json"
  if ! cmp -s "$WORK/orthanc.json" "$ORTHWEB_ETC/orthanc.json" 2>/dev/null; then
    mv -f "$WORK/orthanc.json" "$ORTHWEB_ETC/orthanc.json"; echo orthanc.json
  fi
}

step_secrets() {
  ensure_secret "$ADMIN_SECRET_ARN" "$WORK/admin.json" generate_admin_secret
  if [ -n "$BYO_TLS_SECRET" ]; then
    read_secret "$BYO_TLS_SECRET" "$WORK/tls.json" || die "cannot read your certificate secret $BYO_TLS_SECRET"
    log "using your certificate from $BYO_TLS_SECRET"
  else
    ensure_site_certificate "$WORK/tls.json"
  fi
  ensure_db_role "$WORK/admin.json"
  write_orthanc_credentials
  { write_runtime_files "$WORK/admin.json" "$WORK/tls.json"; [ ! -r "$ORTHWEB_ETC/orthanc.template.json" ] || write_orthanc_config; } >"$WORK/changed"
  if [ -s "$WORK/changed" ]; then log "runtime files changed: $(tr '\n' ' ' <"$WORK/changed")"
  else log "runtime files: unchanged"; fi
  cp "$WORK/changed" "$ORTHWEB_RUN/last-changed"
}

# -- the host -----------------------------------------------------------------------------------

imds() {  # imds PATH: one IMDSv2 lookup; the token goes in a header file, not an argument
  curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token \
    | sed 's/^/X-aws-ec2-metadata-token: /' >"$WORK/imds-header" || return 1
  curl -sf -H @"$WORK/imds-header" "http://169.254.169.254/latest/meta-data/$1"
}

step_network() {  # the host has no public address until Terraform attaches the site's Elastic IP
  if [ "$SITE_MODE" = scaled ]; then log "scaled profile: the load balancer holds the site's addresses"; return 0; fi
  local i
  for i in $(seq 1 "${ORTHWEB_EIP_ATTEMPTS:-60}"); do
    if [ "$(imds public-ipv4 || true)" = "$SITE_IP" ]; then log "Elastic IP $SITE_IP attached"; return 0; fi
    [ "$i" -eq 1 ] && log "waiting for the Elastic IP $SITE_IP"
    sleep 5
  done
  die "the Elastic IP $SITE_IP was not attached within 5 minutes (the boot unit will try again)"
}

step_packages() {
  local want=(docker postgresql15 openssl python3)
  local missing=() p
  for p in "${want[@]}"; do rpm -q "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"; dnf install -y -q "${missing[@]}" || die "package installation failed"
  else log "packages: present"; fi
  systemctl enable --now docker.service
}

step_compose() {
  if [ -x "$COMPOSE_PLUGIN" ] && echo "$COMPOSE_SHA256  $COMPOSE_PLUGIN" | sha256sum -c --status; then
    log "docker compose $COMPOSE_VERSION: present"; return 0
  fi
  local tmp; tmp=$(mktemp)
  curl --fail --silent --show-error --location --proto '=https' --tlsv1.2 --retry 5 -o "$tmp" "$COMPOSE_URL" \
    || die "docker compose download failed"
  echo "$COMPOSE_SHA256  $tmp" | sha256sum -c --status || die "docker compose download failed its SHA-256 check"
  install -D -m 0755 "$tmp" "$COMPOSE_PLUGIN"; rm -f "$tmp"
  log "docker compose $COMPOSE_VERSION installed (SHA-256 verified)"
}

step_rds_ca() {
  openssl crl2pkcs7 -nocrl -certfile "$RDS_CA_FILE" | openssl pkcs7 -print_certs -noout >/dev/null 2>&1 \
    || die "$RDS_CA_FILE is not a PEM certificate bundle"
  log "RDS CA certificates: $(grep -c 'BEGIN CERTIFICATE' "$RDS_CA_FILE") present"
}

step_monitoring() {  # the CloudWatch agent reports the root volume's use (the alarm fires above 80 %)
  local config=/opt/aws/amazon-cloudwatch-agent/etc/orthweb.json
  rpm -q amazon-cloudwatch-agent >/dev/null 2>&1 || dnf install -y -q amazon-cloudwatch-agent \
    || die "installing the CloudWatch agent failed"
  mkdir -p "$(dirname "$config")"
  python3 - "${METRICS_NAMESPACE:?}" "${NAME:?}" >"$config" <<'PY'
import json, sys
namespace, site = sys.argv[1:]
disk = {"measurement": ["used_percent"], "resources": ["/"], "drop_device": True, "append_dimensions": {"Site": site}}
print(json.dumps({"agent": {"metrics_collection_interval": 60},
                  "metrics": {"namespace": namespace, "metrics_collected": {"disk": disk},
                              "aggregation_dimensions": [["Site"]]}}, indent=1))
PY
  /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "file:$config" >/dev/null \
    || die "starting the CloudWatch agent failed"
  log "CloudWatch agent: root volume use reported to $METRICS_NAMESPACE (Site=$NAME)"
}

compose() { docker compose -p orthweb --env-file "$ORTHWEB_ETC/site.env" -f "$ORTHWEB_ETC/docker-compose.yml" "$@"; }

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
  if grep -qE 'db-connection-uri|registered-users|orthanc.json' <<<"$changed"; then
    log "Orthanc's configuration changed: recreating orthanc"; compose up -d --force-recreate --no-deps orthanc
    # The new container may have a new address: nginx resolves it again on reload.
    changed="$changed nginx-upstream"
  fi
  if grep -qE 'site-(cert|key)|client-(ca|crl)|nginx-upstream' <<<"$changed"; then
    log "reloading nginx (certificate, client certificates or upstream changed)"
    compose exec -T nginx nginx -s reload
  fi
}

boot_backoff() {  # a failed boot is retried by systemd; wait longer each time (15 s doubling, at most 5 min)
  local attempts=0 wait
  [ -r "$ORTHWEB_RUN/boot-attempts" ] && attempts=$(cat "$ORTHWEB_RUN/boot-attempts")
  echo $((attempts + 1)) >"$ORTHWEB_RUN/boot-attempts"
  [ "$attempts" -gt 0 ] || return 0
  wait=$((15 * 2 ** (attempts - 1))); [ "$wait" -le 300 ] || wait=300
  log "boot attempt $((attempts + 1)): waiting ${wait}s first"
  sleep "${ORTHWEB_BACKOFF_SLEEP:-$wait}"
}

main() {
  case "${1:-boot}" in
    boot)
      boot_backoff
      # ORTHWEB_BOOT_STEPS lets tests off EC2 run the steps that can run there; the host runs all.
      local step
      for step in ${ORTHWEB_BOOT_STEPS:-network packages compose rds_ca secrets monitoring services}; do "step_$step"; done
      rm -f "$ORTHWEB_RUN/boot-attempts" ;;
    secrets) step_secrets ;;
    refresh) step_refresh ;;
    *) die "usage: orthweb-bootstrap [boot|secrets|refresh]" ;;
  esac
  log "done: ${1:-boot}"
}

main "$@"
