"""STAND-IN for Orthanc Explorer 2 on the local site (an Orthanc Python-plugin script).

The production image serves Orthanc Explorer 2 at ``/ui/app/`` and redirects ``/`` there
(``IsDefaultOrthancUI``); Debian does not package it. So that a person who opens the local site
sees a working page, this script answers the same two paths: ``/`` redirects to ``ui/app/`` as the
image does, and ``/ui/app/`` lists the studies (patient, date, description, series) with links to
their DICOMweb metadata. It runs inside Orthanc behind the same front door and roles as the real
UI (a viewer may open it, a researcher gets 403). Loaded after the S3 stand-in
(``OrthwebLocalScripts`` in tools/harness/localsite.py).
"""

import html
import json

import orthanc

MARK = "local stand-in for Orthanc Explorer 2"


def _start(output, uri, **request):
    output.Redirect("ui/app/")


def _page(output, uri, **request):
    studies = json.loads(orthanc.RestApiGet("/studies?expand"))
    rows = []
    for study in studies:
        patient = study.get("PatientMainDicomTags", {})
        tags = study.get("MainDicomTags", {})
        uid = html.escape(tags.get("StudyInstanceUID", ""))
        cells = (
            patient.get("PatientName", ""),
            tags.get("StudyDate", ""),
            tags.get("StudyDescription", ""),
            str(len(study.get("Series", []))),
        )
        tds = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        link = f'<a href="../../dicom-web/studies/{uid}/metadata">metadata</a>'
        rows.append(f'<tr class="study" data-study="{uid}">{tds}<td>{link}</td></tr>')
    body = (
        '<!doctype html><html><head><meta charset="utf-8">'
        f'<meta name="orthweb-ui" content="{MARK}"><title>Orthweb</title></head><body>'
        f'<h1>Orthweb</h1><p id="count">{len(studies)} studies</p>'
        '<table id="studies"><tr><th>Patient</th><th>Date</th><th>Description</th><th>Series</th><th></th></tr>'
        + "".join(rows)
        + f"</table><p><small>{MARK}</small></p></body></html>"
    )
    output.AnswerBuffer(body, "text/html; charset=utf-8")


orthanc.RegisterRestCallback("/", _start)
orthanc.RegisterRestCallback("/ui/app/?", _page)
