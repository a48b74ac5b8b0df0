"""The viewers the production image ships, as the host configures them, held against the image's
own rules for loading plugins (the image cannot run here).

The rules are those of the image's configurator at the pinned release (orthanc-builder tag 26.8.1,
docker/orthanc/configurator.py ``getEnabledPlugins`` and docker/orthanc/plugins-def.json, read for
this test): a plugin loads when its section is in the configuration, when its variable is set to
anything but "false", or by default; a plugin marked "variable required" loads only with its
variable; "false" unloads any. The facts below are that file's entries, without the library names.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from config import ROOT
from userdata.site import ComposeValues, OrthancValues, render_compose, render_orthanc

_spec = importlib.util.spec_from_file_location("orthweb_roles", ROOT / "docker" / "orthweb_roles.py")
assert _spec and _spec.loader
roles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roles)

# plugins-def.json at 26.8.1: name -> (section, enabling variable, legacy variable, rule)
# rule: "" (section or variable), "required" (variable only), "default" (on unless "false"),
# "root:<key>" (also a top-level key).
IMAGE_PLUGINS: dict[str, tuple[str, str, str, str]] = {
    "Authorization": ("Authorization", "AUTHORIZATION_PLUGIN_ENABLED", "AUTHZ_ENABLED", ""),
    "ConnectivityChecks": ("ConnectivityChecks", "CONNECTIVITY_CHECKS_PLUGIN_ENABLED", "", ""),
    "DicomWeb": ("DicomWeb", "DICOM_WEB_PLUGIN_ENABLED", "DW_ENABLED", ""),
    "Gdcm": ("Gdcm", "GDCM_PLUGIN_ENABLED", "", "default"),
    "OrthancWebViewer": ("WebViewer", "ORTHANC_WEB_VIEWER_PLUGIN_ENABLED", "OWV_ENABLED", "required"),
    "StoneWebViewer": ("StoneWebViewer", "STONE_WEB_VIEWER_PLUGIN_ENABLED", "", "required"),
    "OsimisWebViewerBasic": ("WebViewer", "OSIMIS_WEB_VIEWER1_PLUGIN_ENABLED", "WVB_ENABLED", "required"),
    "OsimisWebViewerBasicAlpha": (
        "WebViewer",
        "OSIMIS_WEB_VIEWER1_ALPHA_PLUGIN_ENABLED",
        "WVB_ALPHA_ENABLED",
        "required",
    ),
    "PostgreSQL": ("PostgreSQL", "POSTGRESQL_PLUGIN_ENABLED", "PG_ENABLED", ""),
    "MySQL": ("MySQL", "MYSQL_PLUGIN_ENABLED", "MYSQL_ENABLED", ""),
    "Python": ("Python", "PYTHON_PLUGIN_ENABLED", "", "root:PythonScript"),
    "ServeFolders": ("ServeFolders", "SERVE_FOLDERS_PLUGIN_ENABLED", "SERVEFOLDERS_ENABLED", ""),
    "Transfers": ("Transfers", "TRANSFERS_PLUGIN_ENABLED", "TRANSFERS_ENABLED", ""),
    "Worklists": ("Worklists", "WORKLISTS_PLUGIN_ENABLED", "WL_ENABLED", ""),
    "Housekeeper": ("Housekeeper", "HOUSEKEEPER_PLUGIN_ENABLED", "", ""),
    "DelayedDeletion": ("DelayedDeletion", "DELAYED_DELETION_PLUGIN_ENABLED", "", ""),
    "MultitenantDicom": ("MultitenantDicom", "MULTITENANT_DICOM_PLUGIN_ENABLED", "", ""),
    "AdvancedStorage": ("AdvancedStorage", "ADVANCED_STORAGE_PLUGIN_ENABLED", "", ""),
    "Education": ("Education", "EDUCATION_PLUGIN_ENABLED", "", ""),
    "Wsi": ("Wsi", "WSI_PLUGIN_ENABLED", "WSI_ENABLED", ""),
    "Odbc": ("Odbc", "ODBC_PLUGIN_ENABLED", "", ""),
    "Tcia": ("Tcia", "TCIA_PLUGIN_ENABLED", "", ""),
    "Indexer": ("Indexer", "INDEXER_PLUGIN_ENABLED", "", ""),
    "Neuro": ("Neuro", "NEURO_PLUGIN_ENABLED", "", ""),
    "AzureBlobStorage": ("AzureBlobStorage", "AZURE_BLOB_STORAGE_PLUGIN_ENABLED", "AZSTOR_ENABLED", ""),
    "AwsS3Storage": ("AwsS3Storage", "AWS_S3_STORAGE_PLUGIN_ENABLED", "", ""),
    "GoogleCloudStorage": ("GoogleCloudStorage", "GOOGLE_CLOUD_STORAGE_PLUGIN_ENABLED", "", ""),
    "OrthancExplorer2": ("OrthancExplorer2", "ORTHANC_EXPLORER_2_ENABLED", "", "default"),
    "VolView": ("VolView", "VOLVIEW_PLUGIN_ENABLED", "", ""),
    "Ohif": ("Ohif", "OHIF_PLUGIN_ENABLED", "", ""),
    "STL": ("STL", "STL_PLUGIN_ENABLED", "", ""),
    "Java": ("Java", "JAVA_PLUGIN_ENABLED", "", ""),
    "PixelsMasker": ("PixelsMasker", "PIXELS_MASKER_PLUGIN_ENABLED", "", ""),
}
# What the image's configurator adds to an enabled plugin's section (nonStandardDefaults).
IMAGE_DEFAULTS = {"OrthancExplorer2": {"Enable": True, "IsDefaultOrthancUI": True}, "DicomWeb": {"Enable": True}}
# The paths each viewer's plugin serves (its REST callbacks), and what it reads its settings from.
VIEWER_PATHS = {
    "OrthancExplorer2": ("/ui/app/", "/ui/api/configuration"),
    "StoneWebViewer": ("/stone-webviewer/index.html", "/stone-webviewer/configuration.json"),
    "Ohif": ("/ohif/", "/ohif/app-config.js", "/ohif/viewer"),
}


def enabled_plugins(config: Mapping[str, Any], env: Mapping[str, str]) -> set[str]:
    """The plugins the image loads for this merged configuration and environment (module docstring)."""
    on: set[str] = set()
    off: set[str] = set()
    for name, (_, variable, legacy, _) in IMAGE_PLUGINS.items():
        for key in filter(None, (variable, legacy)):
            if key in env:
                (off if env[key] == "false" else on).add(name)
    enabled: set[str] = set()
    for name, (section, _, _, rule) in IMAGE_PLUGINS.items():
        if rule == "required":
            loaded = name in on
        else:
            loaded = section in config or name in on
            if rule.startswith("root:"):
                loaded = loaded or rule[5:] in config
        if rule == "default":
            loaded = True
        if loaded and name not in off:
            enabled.add(name)
    return enabled


def production() -> tuple[dict[str, Any], dict[str, str]]:
    """The orthanc.json a host writes and the Orthanc container's environment in the compose file."""
    config = json.loads(render_orthanc(OrthancValues(ae_title="ORTHANC", bucket="b", region="us-east-1")))
    compose = yaml.safe_load(render_compose(ComposeValues()))
    env = {k: str(v) for k, v in compose["services"]["orthanc"]["environment"].items()}
    # The compose secrets the image merges in: files named for their keys (ORTHANC__X__Y -> X.Y).
    for secret in compose["services"]["orthanc"]["secrets"]:
        assert secret.startswith("ORTHANC__"), secret
    return config, env


def test_the_image_loads_exactly_the_plugins_the_site_needs_with_the_three_viewers():
    config, env = production()
    assert enabled_plugins(config, env) == {
        "OrthancExplorer2",  # the default UI, "/" redirects to it
        "StoneWebViewer",
        "Ohif",
        "DicomWeb",  # what Stone and OHIF read studies through
        "PostgreSQL",
        "AwsS3Storage",
        "Python",  # the roles script
        "Gdcm",  # on by default in the image: decoding of JPEG 2000 and others for the viewers
    }
    # The settings each viewer runs with, after the image adds its defaults.
    assert {**IMAGE_DEFAULTS["OrthancExplorer2"], **config.get("OrthancExplorer2", {})}["IsDefaultOrthancUI"]
    assert config["OHIF"] == {"DataSource": "dicom-web"}, "the plugin reads the section OHIF, in capitals"
    assert config["DicomWeb"]["Enable"] is True


def test_the_rules_see_the_traps_a_section_alone_does_not_avoid():
    """What the rules catch (each would pass a look at orthanc.json): Stone needs its variable; an
    "OHIF" section, the name the plugin reads, does not load the plugin (the configurator looks for
    "Ohif"); "false" unloads even the default UI."""
    config, env = production()
    without = {k: v for k, v in env.items() if k not in ("STONE_WEB_VIEWER_PLUGIN_ENABLED", "OHIF_PLUGIN_ENABLED")}
    assert "OHIF" in config and {"StoneWebViewer", "Ohif"}.isdisjoint(enabled_plugins(config, without))
    assert "StoneWebViewer" not in enabled_plugins({**config, "StoneWebViewer": {"DateFormat": "DD/MM/YYYY"}}, without)
    assert "Ohif" in enabled_plugins({**config, "Ohif": {}}, without)
    assert "OrthancExplorer2" not in enabled_plugins(config, {**env, "ORTHANC_EXPLORER_2_ENABLED": "false"})
    assert "Python" not in enabled_plugins({k: v for k, v in config.items() if k != "PythonScript"}, env)


@pytest.mark.parametrize("viewer", sorted(VIEWER_PATHS))
def test_each_viewer_opens_for_viewers_and_above_and_not_for_a_researcher(viewer):
    for path in VIEWER_PATHS[viewer]:
        assert {role for role in ("viewer", "uploader", "researcher", "admin") if roles.allowed(role, "GET", path)} == {
            "viewer",
            "uploader",
            "admin",
        }, path
