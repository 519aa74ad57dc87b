"""JUnit XML for CI systems: one testsuite per test file, one testcase per case."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from xml.etree import ElementTree

from broker_proxy.policy_tools.runner import CaseResult


def write_junit(results: list[CaseResult], destination: Path) -> None:
    by_file: dict[Path, list[CaseResult]] = defaultdict(list)
    for result in results:
        by_file[result.file].append(result)
    root = ElementTree.Element("testsuites", name="broker-proxy policy test",
                               tests=str(len(results)),
                               failures=str(sum(not r.passed for r in results)))
    for file, file_results in by_file.items():
        suite = ElementTree.SubElement(
            root, "testsuite", name=str(file), tests=str(len(file_results)),
            failures=str(sum(not r.passed for r in file_results)))
        for result in file_results:
            case = ElementTree.SubElement(suite, "testcase", classname=str(file),
                                          name=result.name)
            if not result.passed:
                expected = str(result.case.expect) if result.case else "a runnable file"
                failure = ElementTree.SubElement(
                    case, "failure", message=f"expected {expected}, got {result.got}")
                failure.text = result.detail
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(destination, encoding="utf-8", xml_declaration=True)
