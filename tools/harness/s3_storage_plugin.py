"""STAND-IN for the official Orthanc AWS S3 storage plugin, for the local site harness only.

The production image (orthancteam/orthanc) bundles the real plugin; Debian does not package it and
the AWS C++ SDK it needs is not available here. This Orthanc Python-plugin storage area writes the
same kind of object layout ("flat": one object per attachment, named after its UUID) to the S3 API
of the AWS API emulator, configured from the same ``AwsS3Storage`` section of the rendered Orthanc
configuration. Orthanc acknowledges a C-STORE only after this returns, as with the real plugin.
"""

import json
import runpy

import boto3  # Debian's python3-boto3: the Orthanc Python plugin runs on the system Python
import orthanc

_config = json.loads(orthanc.GetConfiguration())["AwsS3Storage"]
_bucket = _config["BucketName"]
_root = _config.get("RootPath", "")
_s3 = boto3.client("s3", region_name=_config["Region"], endpoint_url=_config.get("Endpoint") or None)
_EXTENSIONS = {orthanc.ContentType.DICOM: ".dcm", orthanc.ContentType.DICOM_UNTIL_PIXEL_DATA: ".dcm.head"}


def _key(uuid, content_type):
    name = uuid + _EXTENSIONS.get(content_type, ".unk")
    return f"{_root}/{name}" if _root else name


def _create(uuid, content_type, data):
    _s3.put_object(Bucket=_bucket, Key=_key(uuid, content_type), Body=data)


def _read(uuid, content_type):
    return _s3.get_object(Bucket=_bucket, Key=_key(uuid, content_type))["Body"].read()


def _remove(uuid, content_type):
    _s3.delete_object(Bucket=_bucket, Key=_key(uuid, content_type))


orthanc.RegisterStorageArea(_create, _read, _remove)

# Orthanc's Python plugin runs one script, and on the local site that is this stand-in: it runs after
# itself the scripts a host's Orthanc runs as its PythonScript (the roles script).
for _script in json.loads(orthanc.GetConfiguration()).get("OrthwebLocalScripts", []):
    runpy.run_path(_script)
