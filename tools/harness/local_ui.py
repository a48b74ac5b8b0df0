"""STAND-IN for Orthanc Explorer 2 on the local site (an Orthanc Python-plugin script).

The production image serves Orthanc Explorer 2 at ``/ui/app/`` and redirects ``/`` there
(``IsDefaultOrthancUI``); Debian does not package it. So that a person who opens the local site
sees a working page, this script answers the same paths the way Orthanc Explorer 2 is built: ``/``
redirects to ``ui/app/``; ``/ui/app/`` is a page of the site's own script (``app.js``), which asks
the REST API for the studies (patient, date, description, series) and lists them with links to their
DICOMweb metadata. Like Orthanc Explorer 2's page, it also carries one inline script, which the
front door's Content-Security-Policy refuses (nginx redirects ``/ui/app`` itself): the browser test
sees the policy enforced and the page working under it. It runs inside Orthanc behind the same
front door and roles as the real UI (a viewer may open it, a researcher gets 403). Loaded after the
S3 stand-in (``OrthwebLocalScripts`` in tools/harness/localsite.py).
"""

import orthanc

MARK = "local stand-in for Orthanc Explorer 2"

PAGE = (
    '<!doctype html><html><head><meta charset="utf-8">'
    f'<meta name="orthweb-ui" content="{MARK}"><title>Orthweb</title>'
    # As in Orthanc Explorer 2's index.html: an inline script (refused by the site's policy).
    "<script>document.documentElement.dataset.inline = 'ran';</script>"
    '<script src="app.js" defer></script></head><body>'
    '<h1>Orthweb</h1><p id="count">loading</p>'
    '<table id="studies"><tr><th>Patient</th><th>Date</th><th>Description</th><th>Series</th><th></th></tr>'
    f"</table><p><small>{MARK}</small></p></body></html>"
)

SCRIPT = """
// Relative to the page without the user:password a browser may have in its address (fetch refuses those).
fetch(new URL("../../studies?expand", location.origin + location.pathname), {credentials: "same-origin"})
  .then((answer) => answer.ok ? answer.json() : Promise.reject(new Error("HTTP " + answer.status)))
  .then((studies) => {
    const table = document.getElementById("studies");
    for (const study of studies) {
      const patient = study.PatientMainDicomTags || {};
      const tags = study.MainDicomTags || {};
      const row = table.insertRow();
      row.className = "study";
      row.dataset.study = tags.StudyInstanceUID || "";
      const series = String((study.Series || []).length);
      for (const text of [patient.PatientName, tags.StudyDate, tags.StudyDescription, series]) {
        row.insertCell().textContent = text || "";
      }
      const link = document.createElement("a");
      link.href = "../../dicom-web/studies/" + encodeURIComponent(row.dataset.study) + "/metadata";
      link.textContent = "metadata";
      row.insertCell().appendChild(link);
    }
    document.getElementById("count").textContent = studies.length + " studies";
  })
  .catch((error) => { document.getElementById("count").textContent = "failed: " + error.message; });
"""


def _start(output, uri, **request):
    output.Redirect("ui/app/")


def _page(output, uri, **request):
    output.AnswerBuffer(PAGE, "text/html; charset=utf-8")


def _script(output, uri, **request):
    output.AnswerBuffer(SCRIPT, "text/javascript; charset=utf-8")


orthanc.RegisterRestCallback("/", _start)
orthanc.RegisterRestCallback("/ui/app/?", _page)
orthanc.RegisterRestCallback("/ui/app/app.js", _script)
