"""JUnit XML, as pytest's --junitxml writes it, for GitLab, Jenkins and GitHub Actions test reports.

One <testcase> per experiment (classname "addrinuse.experiments", name = the experiment): a failed
one carries <failure> with the expected-vs-observed table as its text, a skipped one <skipped> with
the missing requirement, one that could not run <error>. The steps go to <system-out>."""

from __future__ import annotations

import os
import re
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from addrinuse.errors import BadInput
from addrinuse.experiments.report import count

CLASSNAME = "addrinuse.experiments"
# XML 1.0 allows no control characters but tab, LF and CR (a server's output may hold any byte).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text) -> str:
    return _NOT_XML.sub("?", str(text))


def check_writable(path: str) -> None:
    """Refuse, before anything runs, a report path that cannot be written (exit 2)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise BadInput(f"cannot write the JUnit report to {path}: give a file path in a writable folder")


def document(reports: list[dict], began: datetime | None = None) -> ET.ElementTree:
    from addrinuse.render.experiments import checks_table, step_lines

    n = count(reports)
    total = round(sum(r["duration_s"] for r in reports), 3)
    suites = ET.Element("testsuites", name="addrinuse experiments", tests=str(len(reports)),
                        failures=str(n["failed"]), errors=str(n["cannot_run"]), skipped=str(n["skipped"]), time=str(total))
    suite = ET.SubElement(suites, "testsuite", name=CLASSNAME, tests=str(len(reports)), failures=str(n["failed"]),
                          errors=str(n["cannot_run"]), skipped=str(n["skipped"]), time=str(total),
                          timestamp=(began or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
                          hostname=socket.gethostname())
    props = ET.SubElement(suite, "properties")
    if reports:
        ET.SubElement(props, "property", name="kernel", value=reports[0]["kernel"])
        for key, value in reports[0]["sysctls"].items():
            ET.SubElement(props, "property", name=f"net.{key}", value=str(value))
    for r in reports:
        case = ET.SubElement(suite, "testcase", classname=CLASSNAME, name=r["name"], file=r["path"],
                             time=str(r["duration_s"]))
        if r["status"] == "skipped":
            ET.SubElement(case, "skipped", message=_clean(r["skipped"]), type="skipped").text = _clean(r["skipped"])
        elif r["status"] == "cannot_run":
            ET.SubElement(case, "error", message=_clean(r["message"]), type="CannotRun").text = _clean(r["message"])
        elif r["status"] == "failed":
            differed = sum(c["ok"] is False for c in r["checks"])
            message = r["message"] or f"{differed} of {len(r['checks'])} expectations differed"
            text = "\n".join(filter(None, [r["message"], checks_table(r["checks"])]))
            ET.SubElement(case, "failure", message=_clean(message), type="ExpectationFailed").text = _clean(text)
        if r["steps"]:
            ET.SubElement(case, "system-out").text = _clean("\n".join(step_lines(r["steps"])))
    ET.indent(suites)
    return ET.ElementTree(suites)


def write(path: str, reports: list[dict], began: datetime | None = None) -> None:
    try:
        document(reports, began).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as err:
        raise BadInput(f"cannot write the JUnit report to {path} ({err.strerror}): give a writable file path") from err
