"""Config: defaults, sources and precedence, and one failing input per validation rule."""

from __future__ import annotations

import subprocess
import sys

import pytest

from config import ROOT
from config.inputs import ConfigError, DicomModality, OrthwebConfig, load_config, public_addresses
from main import EXIT_CONFIG_ERROR, main

BAD_INPUTS = [
    (
        "NAME",
        "radio--logy",
        "name: 'radio--logy' is not allowed; allowed: 3-20 chars: lowercase letters, digits, single hyphens",
    ),
    ("NAME", "sthree-site", "not sthree- or amzn-s3-demo- (S3 reserves them)"),
    ("NAME", "Orthweb", "name: 'Orthweb' is not allowed; allowed: 3-20 chars"),
    ("NAME", "a-very-long-name-over-twenty", "name:"),
    ("ENVIRONMENT", "staging", "environment: 'staging' is not allowed; allowed: dev, test, prod"),
    ("REGION", "mars-1", "region: 'mars-1' is not allowed; allowed: an AWS region with RDS"),
    ("REGION", "us-east-9", "region: 'us-east-9' is not allowed; allowed: an AWS region with RDS"),
    ("TARGET", "gcp", "target: 'gcp' is not allowed; allowed: aws, emulator"),
    ("VPC_CIDR", "172.17.0.1/16", "vpc_cidr: '172.17.0.1/16' is not allowed; allowed: an IPv4 network"),
    ("VPC_CIDR", "10.0.0.0/8", "vpc_cidr: '10.0.0.0/8' is not allowed; allowed: a prefix length from /16 to /24"),
    ("AZ_COUNT", "4", "az_count: 4 is not allowed; allowed: a whole number from 1 to 3"),
    ("AZ_COUNT", "two", "az_count: 'two' is not allowed; allowed: a whole number"),
    ("INTERFACE_ENDPOINTS", "ssm,ec2", "interface_endpoints: 'ec2' is not allowed; allowed: ssm, ssmmessages"),
    ("INSTANCE_TYPE", "big", "instance_type: 'big' is not allowed; allowed: an EC2 instance type"),
    ("AMI_ID", "ami-xyz", "ami_id: 'ami-xyz' is not allowed; allowed: empty, or an AMI id"),
    ("ROOT_VOLUME_GB", "4", "root_volume_gb: 4 is not allowed; allowed: a whole number from 8 to 1024"),
    ("SSH_PUBLIC_KEY", "not a key", "ssh_public_key: '<key text>' is not allowed; allowed: empty, or an OpenSSH"),
    ("WEB_CLIENT_CIDRS", "10.0.0.0/33", "web_client_cidrs: '10.0.0.0/33' is not allowed"),
    ("DICOM_CLIENT_CIDRS", "hospital", "dicom_client_cidrs: 'hospital' is not allowed"),
    ("DB_INSTANCE_CLASS", "t4g.small", "db_instance_class: 't4g.small' is not allowed; allowed: an RDS instance class"),
    ("DB_ALLOCATED_STORAGE_GB", "10", "db_allocated_storage_gb: 10 is not allowed; allowed: a whole number from 20"),
    ("DB_MAX_ALLOCATED_STORAGE_GB", "19", "db_max_allocated_storage_gb: 19 is not allowed"),
    ("DB_MULTI_AZ", "maybe", "db_multi_az: 'maybe' is not allowed; allowed: true, false, or empty"),
    (
        "DB_BACKUP_RETENTION_DAYS",
        "3",
        "db_backup_retention_days: 3 is not allowed; allowed: a whole number from 7 to 35",
    ),
    ("NONCURRENT_VERSION_EXPIRATION_DAYS", "0", "noncurrent_version_expiration_days: 0 is not allowed"),
    ("INTELLIGENT_TIERING", "sometimes", "intelligent_tiering: 'sometimes' is not allowed; allowed: true or false"),
    ("LOG_RETENTION_DAYS", "100", "log_retention_days: 100 is not allowed; allowed: empty, or 1, 3, 5"),
    ("UNIQUE_SUFFIX", "2", "unique_suffix: '2' is not allowed; allowed: true or false"),
    ("TAGS", "aws:owner=x", "tags: 'aws:owner=x' is not allowed; allowed: key=value pairs"),
    ("TAGS", "novalue", "tags: 'novalue' is not allowed; allowed: key=value pairs separated by commas"),
    ("SITE_NAME", "PACS_Site", "site_name: 'PACS_Site' is not allowed; allowed: empty, or a lowercase DNS name"),
    ("AE_TITLE", "THIS_AE_TITLE_IS_TOO_LONG", "ae_title: 'THIS_AE_TITLE_IS_TOO_LONG' is not allowed; allowed: 1-16"),
    ("TLS_CERTIFICATE_SECRET", "my secret", "tls_certificate_secret: 'my secret' is not allowed"),
    ("DICOM_MODALITIES", '[{"aet": "PACS"}]', 'dicom_modalities: \'[{"aet": "PACS"}]\' is not allowed'),
    (
        "DICOM_MODALITIES",
        '[{"aet": "PACS", "host": "10.0.0.5", "rights": ["delete"]}]',
        "dicom_modalities.rights: 'delete' is not allowed; allowed: echo, find, move, get, store",
    ),
    (
        "DICOM_MODALITIES",
        '[{"aet": "PACS", "host": "10.0.0.5", "port": 70000}]',
        "dicom_modalities.port: 70000 is not allowed",
    ),
    ("ORTHANC_IMAGE", "orthancteam/orthanc:latest", "orthanc_image: 'orthancteam/orthanc:latest' is not allowed"),
    ("NGINX_IMAGE", "nginx", "nginx_image: 'nginx' is not allowed; allowed: empty, or name:tag"),
    ("CONTAINER_LOGS", "on", "container_logs: 'on' is not allowed; allowed: true or false"),
    ("DICOM_CLIENT_AUTH", "password", "dicom_client_auth: 'password' is not allowed; allowed: none, certificate"),
    ("ALLOW_DATA_DESTROY", "sure", "allow_data_destroy: 'sure' is not allowed; allowed: true or false"),
    (
        "EMULATOR_ENDPOINT",
        "http://127.0.0.1:5000",
        "emulator_endpoint: 'http://127.0.0.1:5000' is not allowed; allowed: empty unless target is emulator",
    ),
    ("COLOUR", "blue", "ORTHWEB_COLOUR: 'set' is not allowed"),
]


def run_main(monkeypatch, tmp_path, capsys, env: dict[str, str]) -> tuple[int, str]:
    environ = {"CDKTF_OUTDIR": str(tmp_path / "out"), **{f"ORTHWEB_{k}": v for k, v in env.items()}}
    monkeypatch.setattr("main.ROOT", tmp_path)  # no orthweb.toml from the developer's checkout
    code = main(environ)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("field,value,message", BAD_INPUTS, ids=[f"{f}={v}" for f, v, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_a_clear_line(monkeypatch, tmp_path, capsys, field, value, message):
    code, err = run_main(monkeypatch, tmp_path, capsys, {field: value})
    assert code == EXIT_CONFIG_ERROR
    assert message in err
    assert all(line.startswith("orthweb: config error: ") for line in err.splitlines())
    assert not (tmp_path / "out").exists(), "nothing may be written for a bad config"


_PROD_NETWORKS = {"WEB_CLIENT_CIDRS": "10.20.0.0/16", "DICOM_CLIENT_CIDRS": "10.20.1.0/24"}


@pytest.mark.parametrize(
    "env,message",
    [
        ({"TARGET": "emulator"}, "emulator_endpoint: '' is not allowed; allowed: http://127.0.0.1:PORT"),
        (
            {"TARGET": "emulator", "EMULATOR_ENDPOINT": "http://10.1.2.3:5000"},
            "emulator_endpoint: 'http://10.1.2.3:5000' is not allowed; allowed: http://127.0.0.1:PORT",
        ),
        ({"TARGET": "emulator", "EMULATOR_ENDPOINT": "https://sts.amazonaws.com"}, "(loopback only)"),
        ({"TARGET": "emulator", "EMULATOR_ENDPOINT": "http://127.0.0.1"}, "(loopback only)"),
        # The whole Internet on the DICOM port in prod only with client certificates: both fields named.
        (
            {"ENVIRONMENT": "prod", "WEB_CLIENT_CIDRS": "10.20.0.0/16"},
            "dicom_client_cidrs: '0.0.0.0/0' is not allowed; allowed: in prod, your modalities' networks, at most"
            " 16,777,216 public addresses (a /8) together (this list covers 3,702,258,688); or any networks with"
            ' dicom_client_auth = "certificate"',
        ),
        (
            {"DICOM_MODALITIES": '[{"aet": "PACS", "host": "pacs.example.org", "rights": ["find", "move"]}]'},
            "dicom_modalities.host: 'pacs.example.org' is not allowed; allowed: an IPv4 address when rights include move",
        ),
        # Prod keeps its data from a destroy and its logs six years (issue 20).
        (
            {"ENVIRONMENT": "prod", "ALLOW_DATA_DESTROY": "true", **_PROD_NETWORKS},
            "allow_data_destroy: True is not allowed; allowed: false in prod",
        ),
        (
            {"ENVIRONMENT": "prod", "LOG_RETENTION_DAYS": "365", **_PROD_NETWORKS},
            "log_retention_days: 365 is not allowed; allowed: in prod, empty or at least 2192 (6 years, HIPAA"
            " documentation retention): 2192, 2557, 2922, 3288, 3653",
        ),
        # DICOM TLS to modalities needs their CA; prod moves no images in clear to a public address.
        (
            {"DICOM_MODALITIES": '[{"aet": "PACS", "host": "10.0.0.5", "rights": ["move"], "tls": true}]'},
            "modality_ca_file: '' is not allowed; allowed: the PEM file of your modalities' CA when a modality has"
            " tls = true",
        ),
        (
            {"MODALITY_CA_FILE": "/nonexistent/modality-ca.pem"},
            "modality_ca_file: '/nonexistent/modality-ca.pem' is not allowed; allowed: empty, or a readable PEM file",
        ),
        (
            {
                "ENVIRONMENT": "prod",
                "DICOM_MODALITIES": '[{"aet": "PACS", "host": "10.0.0.5", "rights": ["move"]},'
                ' {"aet": "CLOUDPACS", "host": "198.51.100.7", "rights": ["move"]},'
                ' {"aet": "REMOTE", "host": "8.8.4.4", "rights": ["find", "move"]}]',
                **_PROD_NETWORKS,
            },
            "dicom_modalities.tls: False is not allowed; allowed: true for REMOTE in prod: a C-MOVE to the public"
            " address 8.8.4.4 would carry the images in clear over the Internet",
        ),
        (
            {"DB_ALLOCATED_STORAGE_GB": "200", "DB_MAX_ALLOCATED_STORAGE_GB": "100"},
            "db_max_allocated_storage_gb: 100 is not allowed; allowed: at least db_allocated_storage_gb (200)",
        ),
    ],
)
def test_cross_field_rules(monkeypatch, tmp_path, capsys, env, message):
    code, err = run_main(monkeypatch, tmp_path, capsys, env)
    assert code == EXIT_CONFIG_ERROR
    assert message in err


def test_modality_tls_takes_a_ca_file_of_certificates_only(monkeypatch, tmp_path, capsys):
    """Prod moves to a public address over TLS with the modalities' CA; only the public one is named
    (a private or documentation address is not the Internet); a file holding a key is refused."""
    from tools.harness.pki import make_ca

    ca = make_ca(tmp_path / "ca", "Hospital modality CA")
    modalities = (
        '[{"aet": "PACS", "host": "10.0.0.5", "rights": ["move"]},'
        ' {"aet": "REMOTE", "host": "8.8.4.4", "rights": ["move"], "tls": true}]'
    )
    env = {"ENVIRONMENT": "prod", "DICOM_MODALITIES": modalities, **_PROD_NETWORKS}
    code, err = run_main(monkeypatch, tmp_path, capsys, {**env, "MODALITY_CA_FILE": str(ca.cert)})
    assert (code, err) == (0, "")
    config = OrthwebConfig(modality_ca_file=str(ca.cert))
    assert config.modality_ca == ca.cert.read_text()
    with_key = tmp_path / "with-key.pem"
    with_key.write_text(ca.cert.read_text() + ca.key.read_text())
    code, err = run_main(monkeypatch, tmp_path, capsys, {**env, "MODALITY_CA_FILE": str(with_key)})
    assert code == EXIT_CONFIG_ERROR and "(no private key)" in err and "BEGIN" not in err


def test_prod_with_the_whole_internet_on_dicom_needs_client_certificates(monkeypatch, tmp_path, capsys):
    web = {"WEB_CLIENT_CIDRS": "10.20.0.0/16"}
    code, err = run_main(
        monkeypatch, tmp_path, capsys, {**web, "ENVIRONMENT": "prod", "DICOM_CLIENT_CIDRS": "0.0.0.0/0"}
    )
    assert code == EXIT_CONFIG_ERROR and "dicom_client_cidrs" in err and "dicom_client_auth" in err
    assert not (tmp_path / "out").exists()
    env = {**web, "ENVIRONMENT": "prod", "DICOM_CLIENT_AUTH": "certificate"}
    assert load_config(tmp_path, {f"ORTHWEB_{k}": v for k, v in env.items()}).dicom_client_auth == "certificate"
    narrowed = {
        "ORTHWEB_ENVIRONMENT": "prod",
        "ORTHWEB_DICOM_CLIENT_CIDRS": "10.20.0.0/16",
        "ORTHWEB_WEB_CLIENT_CIDRS": "10.0.0.0/8",
    }
    assert load_config(tmp_path, narrowed).dicom_client_auth == "none"


def test_prod_counts_what_a_client_list_covers_not_how_it_is_written(monkeypatch, tmp_path, capsys):
    """0.0.0.0/1 + 128.0.0.0/1 is the whole Internet: refused on both ports, each field named."""
    split = "0.0.0.0/1,128.0.0.0/1"
    code, err = run_main(monkeypatch, tmp_path, capsys, {"ENVIRONMENT": "prod", "DICOM_CLIENT_CIDRS": split})
    assert code == EXIT_CONFIG_ERROR and not (tmp_path / "out").exists()
    assert f"dicom_client_cidrs: '{split}' is not allowed" in err and "covers 3,702,258,688" in err
    assert "web_client_cidrs: '0.0.0.0/0' is not allowed" in err and "no second control" in err
    prod = {"ORTHWEB_ENVIRONMENT": "prod"}

    def fits(dicom: str, web: str = "10.0.0.0/8") -> bool:
        try:
            load_config(tmp_path, {**prod, "ORTHWEB_DICOM_CLIENT_CIDRS": dicom, "ORTHWEB_WEB_CLIENT_CIDRS": web})
        except ConfigError:
            return False
        return True

    assert fits("8.0.0.0/8,8.0.0.0/9"), "overlapping networks count once: exactly a /8"
    assert not fits("8.0.0.0/8,9.0.0.0/24"), "a /8 and a little more"
    assert not fits("8.0.0.0/9,8.128.0.0/9,9.0.0.0/24"), "split halves of a /8 and a little more"
    assert fits("10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,8.0.0.0/8"), "private space is not public"
    assert not fits("10.0.0.0/8", web="64.0.0.0/2"), "the web port holds to the bound too"
    assert public_addresses(["0.0.0.0/0"]) == public_addresses(["0.0.0.0/1", "128.0.0.0/1"]) > 3_000_000_000
    with pytest.raises(ConfigError, match="dicom_client_cidrs: '::/0' is not allowed; allowed: an IPv4 network"):
        load_config(tmp_path, {"ORTHWEB_DICOM_CLIENT_CIDRS": "::/0"})


def test_every_problem_is_reported_at_once(monkeypatch, tmp_path, capsys):
    code, err = run_main(monkeypatch, tmp_path, capsys, {"AZ_COUNT": "9", "ENVIRONMENT": "qa"})
    assert code == EXIT_CONFIG_ERROR
    assert len(err.splitlines()) == 2


def test_config_file_then_environment(tmp_path):
    (tmp_path / "orthweb.toml").write_text(
        'name = "radiology"\naz_count = 3\nweb_client_cidrs = ["10.20.0.0/16"]\n'
        '[tags]\nCostCenter = "imaging"\n'
        '[[dicom_modalities]]\naet = "PACS"\nhost = "10.20.1.5"\nport = 4100\nrights = ["echo", "find", "move"]\n'
    )
    config = load_config(tmp_path, {"ORTHWEB_AZ_COUNT": "1"})
    assert config.name == "radiology"
    assert config.az_count == 1, "environment overrides the file"
    assert config.web_client_cidrs == ("10.20.0.0/16",)
    assert config.tag_map["CostCenter"] == "imaging"
    assert config.dicom_modalities == (DicomModality("PACS", "10.20.1.5", 4100, ("echo", "find", "move")),)


def test_tool_variables_are_not_config(tmp_path):
    config = load_config(tmp_path, {"ORTHWEB_TF_MIRROR": "/opt/x", "ORTHWEB_PG_BIN": "/usr/lib/postgresql/17/bin"})
    assert config == OrthwebConfig()


def test_unknown_key_in_config_file(tmp_path):
    (tmp_path / "orthweb.toml").write_text('nmae = "typo"\n')
    with pytest.raises(ConfigError, match="orthweb.toml: nmae"):
        load_config(tmp_path, {})


def test_invalid_toml(tmp_path):
    (tmp_path / "orthweb.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path, {})


def test_prod_defaults():
    assert OrthwebConfig(environment="prod").multi_az is True
    assert OrthwebConfig().multi_az is False
    assert OrthwebConfig(environment="prod", db_multi_az=False).multi_az is False
    # Prod: the audit trail with DICOM data events, logs kept 6 years; elsewhere off and a year.
    prod = OrthwebConfig(environment="prod")
    assert (prod.audit_trail, prod.retention_days) == (True, 2192)
    assert (OrthwebConfig().audit_trail, OrthwebConfig().retention_days) == (False, 365)
    assert OrthwebConfig(environment="prod", cloudtrail=False, log_retention_days=3653).audit_trail is False
    assert OrthwebConfig(log_retention_days=30).retention_days == 30


def test_a_prod_stack_has_its_trail_and_keeps_its_logs_six_years(tmp_path):
    """What the prod defaults build: the trail with data events on the DICOM bucket, and every log
    group and the log bucket's files kept 2192 days."""
    from tests.conftest import synth_json

    config = OrthwebConfig(
        environment="prod", web_client_cidrs=("10.20.0.0/16",), dicom_client_cidrs=("10.20.1.0/24",)
    ).validate()
    resources = synth_json(config, tmp_path)["resource"]
    (trail,) = resources["aws_cloudtrail"].values()
    assert trail["event_selector"][0]["data_resource"][0]["type"] == "AWS::S3::Object"
    groups = resources["aws_cloudwatch_log_group"].values()
    assert len(groups) >= 7 and {g["retention_in_days"] for g in groups} == {2192}
    (log_rules,) = [
        r["rule"] for k, r in resources["aws_s3_bucket_lifecycle_configuration"].items() if k.startswith("storage_log")
    ]
    assert {rule["expiration"][0]["days"] for rule in log_rules if "expiration" in rule} == {2192}


def test_real_process_exit_code_and_no_partial_output(tmp_path):
    out = tmp_path / "cdktf.out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py")],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ORTHWEB_AZ_COUNT": "0", "CDKTF_OUTDIR": str(out)},
    )
    assert proc.returncode == 2
    assert "az_count: 0 is not allowed; allowed: a whole number from 1 to 3" in proc.stderr
    assert not out.exists()


def test_a_name_too_long_for_the_scaled_target_groups_is_refused_at_synth(monkeypatch, tmp_path, capsys):
    """A 20-character name with unique_suffix and hosts >= 2 gives target group names of 33
    characters (AWS allows 32); the random suffix is unknown at plan time, so only apply would fail."""
    long = {"NAME": "radiology-department", "UNIQUE_SUFFIX": "true", "HOSTS": "2"}
    code, err = run_main(monkeypatch, tmp_path, capsys, long)
    assert code == EXIT_CONFIG_ERROR and not (tmp_path / "out").exists()
    assert "name: 'radiology-department' is not allowed; allowed: at most 19 characters with hosts >= 2" in err
    assert "may have at most 32" in err
    assert load_config(tmp_path, {f"ORTHWEB_{k}": v for k, v in {**long, "NAME": "radiology-departmen"}.items()})
    assert load_config(tmp_path, {"ORTHWEB_NAME": "radiology-department", "ORTHWEB_HOSTS": "2"}), "no suffix: 20 fit"
